"""Pixel target encoder: f_φ is the identity on patches ("dense pixels")."""
from typing import Optional

import torch
import torch.nn as nn

from m3i_mm.registry import MODELS


@MODELS.register_module()
class PixelTarget(nn.Module):
    """Dense pixel targets: each target patch flattened to a vector.

    With :class:`GaussianPosterior` (``normalize_target=True``, i.e. MAE's
    normalised pixels) this turns the framework's dense image target into
    masked image modeling on pixels (Table 5, MIM_pixel / MAE).

    Args:
        patch_size (int): Patch size in pixels.
        geometric_view (bool): Take the pixels of the target view before its
            photometric augmentation (``inputs[2]`` of the batch, see
            ``M3IDataPreprocessor(geometric_target_view=True)``) instead of
            the augmented target view: an inter-view prediction (Table 2 g,
            j; SiameseIM) cannot see the target view's colour change.
            Defaults to False.
        backbone (nn.Module, optional): Ignored (the algorithm passes its
            backbone to every image target encoder).
    """

    def __init__(self, patch_size: int,
                 backbone: Optional[nn.Module] = None,
                 geometric_view: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.geometric_view = bool(geometric_view)

    def update(self, backbone: nn.Module) -> None:
        """Nothing to update: the target encoder has no parameters."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C) patches in raster order."""
        n, c, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f'image size {(h, w)} is not divisible by the '
                             f'patch size {p}')
        x = images.reshape(n, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p),
                                                    p * p * c)
