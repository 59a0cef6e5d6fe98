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
        backbone (nn.Module, optional): Ignored (the algorithm passes its
            backbone to every image target encoder).
    """

    def __init__(self, patch_size: int,
                 backbone: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.patch_size = patch_size

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
