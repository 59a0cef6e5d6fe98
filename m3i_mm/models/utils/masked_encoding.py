"""Encode only the visible patches of a masked input (MAE / SiameseIM).

Single-input masked pre-training ("mask" mode) can either fill the masked
patches and encode all of them, or drop them from the encoder as MAE [30]
and SiameseIM [67] do. Dropping gives each visible token the same output as
a ViT that never saw the masked patches, at a fraction of the cost.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.models.utils import resize_pos_embed


def vit_visible_tokens(vit: nn.Module,
                       images: torch.Tensor,
                       keep_idx: torch.Tensor,
                       grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Run an mmpretrain ViT on the patches ``keep_idx`` only.

    As mmpretrain's ``MAEViT`` (and SiameseIM's encoder): patch embedding and
    position embedding of the whole grid, then only the kept patch tokens
    (with the class token, if any) go through the Transformer layers. The
    layers run up to the ViT's last ``out_indices`` entry and the final norm
    applies when that is the last layer, so a full ``keep_idx`` gives the
    patch tokens of the ViT's last output.

    Args:
        vit (VisionTransformer): mmpretrain ViT (or subclass).
        images (Tensor): (N, C, H, W) input images.
        keep_idx (Tensor): (N, K) long, indices of the kept patches in raster
            order of the patch grid.
        grid (tuple[int, int], optional): The patch grid ``(h, w)`` the
            indices refer to (e.g. the mask's); checked against the ViT's.

    Returns:
        Tensor: (N, K, C_out) tokens of the kept patches, in ``keep_idx``
        order.

    Raises:
        TypeError: If ``vit`` is not an mmpretrain ``VisionTransformer``.
        ValueError: If ``keep_idx`` does not fit the batch or the grid, or
            ``grid`` is not the ViT's patch grid.
    """
    if not isinstance(vit, VisionTransformer):
        raise TypeError(
            'dropping masked tokens needs an mmpretrain VisionTransformer '
            f'backbone, got {type(vit).__name__}')
    x, vit_grid = vit.patch_embed(images)
    if grid is not None and tuple(grid) != tuple(vit_grid):
        raise ValueError(
            f'the ViT sees a {tuple(vit_grid)} patch grid but the mask grid '
            f'is {tuple(grid)}; mask patch size and ViT patch size must match')
    n, num_patches, dims = x.shape
    in_grid = keep_idx.numel() == 0 or (
        int(keep_idx.min()) >= 0 and int(keep_idx.max()) < num_patches)
    if keep_idx.dim() != 2 or keep_idx.shape[0] != n or not in_grid:
        raise ValueError(
            f'keep_idx {tuple(keep_idx.shape)} must be (N={n}, K) indices '
            f'into the {vit_grid[0]}x{vit_grid[1]} patch grid')
    pos = resize_pos_embed(
        vit.pos_embed,
        vit.patch_resolution,
        vit_grid,
        mode=vit.interpolate_mode,
        num_extra_tokens=vit.num_extra_tokens)
    extra = vit.num_extra_tokens
    x = x + pos[:, extra:]
    x = torch.gather(x, 1, keep_idx[..., None].expand(-1, -1, dims))
    if vit.cls_token is not None:
        cls_token = (vit.cls_token + pos[:, :extra]).expand(n, -1, -1)
        x = torch.cat([cls_token, x], dim=1)
    x = vit.pre_norm(vit.drop_after_pos(x))
    last = max(i % len(vit.layers) for i in vit.out_indices)
    for i, layer in enumerate(vit.layers[:last + 1]):
        x = layer(x)
        if i == len(vit.layers) - 1 and vit.final_norm:
            x = vit.ln1(x)
    return x[:, extra:]
