"""Where the patches of a target view lie in an input view.

Each augmented view is a crop box ``(x0, y0, x1, y1)`` of the original image
(pixel coordinates, ``x1``/``y1`` exclusive) resized to the view size, then
optionally flipped horizontally. A target patch's centre is mapped back to the
original image and then into the input view, in units of input-view patches,
measured from the input view's top-left corner (SiameseIM-style relative
positions). The decoder places its mask token for that target patch at this
(generally fractional) position, so it can be matched to the input tokens.
"""
from typing import Tuple

import torch


def patch_centers(grid_size: Tuple[int, int],
                  device: torch.device = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Centres of a ``(h, w)`` patch grid in patch units, (h*w, 2) as (x, y)."""
    h, w = grid_size
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype) + 0.5,
        torch.arange(w, device=device, dtype=dtype) + 0.5,
        indexing='ij')
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


def target_positions_in_input(target_boxes: torch.Tensor,
                              target_flips: torch.Tensor,
                              input_boxes: torch.Tensor,
                              input_flips: torch.Tensor,
                              grid_size: Tuple[int, int]) -> torch.Tensor:
    """Map every target-view patch centre into input-view patch coordinates.

    Args:
        target_boxes (Tensor): (N, 4) crop boxes of the target views.
        target_flips (Tensor): (N,) bool, target view flipped horizontally.
        input_boxes (Tensor): (N, 4) crop boxes of the input views.
        input_flips (Tensor): (N,) bool, input view flipped horizontally.
        grid_size (tuple[int, int]): Patch grid ``(h, w)`` of both views.

    Returns:
        Tensor: (N, h*w, 2) positions ``(x, y)`` in input-view patch units
        (the input's own patch ``(r, c)`` has centre ``(c + 0.5, r + 0.5)``),
        in raster order of the target grid.
    """
    h, w = grid_size
    boxes_t = target_boxes.float()
    boxes_i = input_boxes.float()
    centers = patch_centers(grid_size, device=boxes_t.device)  # (L, 2)
    u = centers[None, :, 0] / w  # fraction of the target view width
    v = centers[None, :, 1] / h
    u = torch.where(target_flips.bool()[:, None], 1 - u, u)
    # Target view -> original image pixels.
    x = boxes_t[:, None, 0] + u * (boxes_t[:, None, 2] - boxes_t[:, None, 0])
    y = boxes_t[:, None, 1] + v * (boxes_t[:, None, 3] - boxes_t[:, None, 1])
    # Original image -> fraction of the input view.
    u_in = (x - boxes_i[:, None, 0]) / (boxes_i[:, None, 2] - boxes_i[:, None, 0])
    v_in = (y - boxes_i[:, None, 1]) / (boxes_i[:, None, 3] - boxes_i[:, None, 1])
    u_in = torch.where(input_flips.bool()[:, None], 1 - u_in, u_in)
    return torch.stack([u_in * w, v_in * h], dim=-1)


def sincos_pos_embed(positions: torch.Tensor,
                     embed_dims: int,
                     temperature: float = 10000.) -> torch.Tensor:
    """2D sine-cosine embedding at continuous ``(x, y)`` positions.

    Matches mmpretrain's ``build_2d_sincos_position_embedding`` layout (x
    features then y features, each ``[sin, cos]``) but accepts fractional
    positions, so relative positions can be embedded.

    Args:
        positions (Tensor): (..., 2) positions ``(x, y)``.
        embed_dims (int): Output size, divisible by 4.
        temperature (float): Frequency base.

    Returns:
        Tensor: (..., embed_dims).
    """
    if embed_dims % 4 != 0:
        raise ValueError(f'embed_dims must be divisible by 4, got {embed_dims}')
    quarter = embed_dims // 4
    omega = torch.arange(
        quarter, dtype=torch.float32, device=positions.device) / quarter
    omega = 1. / (temperature**omega)
    out_x = positions[..., 0:1].float() * omega
    out_y = positions[..., 1:2].float() * omega
    return torch.cat(
        [out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=-1)
