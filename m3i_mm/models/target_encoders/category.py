"""Category target encoder: the category embedding table (classifier weight)."""
import torch
import torch.nn as nn

from m3i_mm.registry import MODELS


@MODELS.register_module()
class CategoryEmbedding(nn.Module):
    """z_y = f_φ(C): one learnable embedding per category.

    Used as the candidates of a Boltzmann posterior this is exactly a linear
    classifier (paper Sec. 3.2: "the linear classifier weight as category
    embedding target"). Jointly trained.

    Args:
        num_classes (int): Number of categories.
        embed_dims (int): Embedding size.
        bias (bool): Keep a per-category bias. Defaults to True.
        init_std (float): Std of the normal init. Defaults to 0.01.
    """

    def __init__(self,
                 num_classes: int,
                 embed_dims: int,
                 bias: bool = True,
                 init_std: float = 0.01) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f'num_classes must be > 0, got {num_classes}')
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dims) *
                                   init_std)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Embeddings of the given categories, (N,) -> (N, D)."""
        return self.weight[labels]
