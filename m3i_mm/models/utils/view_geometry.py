"""Where the patches of a target view lie in an input view.

Each augmented view is a crop box ``(x0, y0, x1, y1)`` of the original image
(pixel coordinates, ``x1``/``y1`` exclusive) resized to the view size, then
optionally flipped horizontally. A target patch's centre is mapped back to the
original image and then into the input view, in units of input-view patches,
measured from the input view's top-left corner (SiameseIM-style relative
positions). The decoder places its mask token for that target patch at this
(generally fractional) position, so it can be matched to the input tokens.
Following SiameseIM [67], the query also carries the relative scale of a
target patch to an input patch (:func:`target_scale_in_input`,
:func:`relative_query_embed`).
"""
from typing import Tuple

import torch

from .checks import check_all


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


def target_scale_in_input(target_boxes: torch.Tensor,
                          input_boxes: torch.Tensor) -> torch.Tensor:
    """Log size ratio of a target-view patch to an input-view patch.

    Both views are resized to the same patch grid, so a patch of a view
    covers ``box width / w`` by ``box height / h`` original-image pixels and
    the ratio of the two patch sizes is the ratio of the crop box sizes.
    Flips do not change it. SiameseIM [67] (``h2/h1`` and ``w2/w1`` of its
    two crops, used through their logarithm in the decoder's relative
    embedding) is the source.

    Args:
        target_boxes (Tensor): (N, 4) target crop boxes ``(x0, y0, x1, y1)``
            in original-image pixels.
        input_boxes (Tensor): (N, 4) input crop boxes, same units.

    Returns:
        Tensor: (N, 2) ``(log(w_t / w_i), log(h_t / h_i))``, natural log of
        the width and height ratios (0 = same patch size).

    Raises:
        ValueError: If a box has zero or negative width or height.
    """
    sizes = []
    for name, boxes in (('target', target_boxes), ('input', input_boxes)):
        size = boxes[..., 2:4].float() - boxes[..., 0:2].float()
        check_all(size > 0, lambda: f'{name} boxes need x1 > x0 and y1 > '
                  f'y0, got {boxes.tolist()}')
        sizes.append(size)
    return (sizes[0] / sizes[1]).log()


def relative_query_embed(positions: torch.Tensor,
                         log_scales: torch.Tensor,
                         embed_dims: int,
                         scale_factor: float = 10.) -> torch.Tensor:
    """Sine-cosine features of target-patch position and relative scale.

    SiameseIM's relative decoder embedding [67]: the sine-cosine features of
    the position (:func:`sincos_pos_embed`) next to those of the scaled log
    size ratios ``scale_factor * log(ratio)`` (the same for every patch of a
    view pair). A learned linear map brings them to the decoder width (see
    :class:`~m3i_mm.models.necks.ImageTargetDecoder`).

    Args:
        positions (Tensor): (N, L, 2) positions ``(x, y)`` in input-view
            patch units (:func:`target_positions_in_input`).
        log_scales (Tensor): (N, 2) ``(log w ratio, log h ratio)``
            (:func:`target_scale_in_input`).
        embed_dims (int): Size of each half, divisible by 4.
        scale_factor (float): Multiplier of the log ratios; SiameseIM uses
            10. Defaults to 10.

    Returns:
        Tensor: (N, L, 2 * embed_dims), position features first.
    """
    if log_scales.shape != (positions.shape[0], 2):
        raise ValueError(f'log_scales must be (N, 2) = ({positions.shape[0]}'
                         f', 2), got {tuple(log_scales.shape)}')
    scale = (scale_factor * log_scales)[:, None].expand_as(positions)
    return torch.cat([
        sincos_pos_embed(positions, embed_dims),
        sincos_pos_embed(scale, embed_dims)
    ], dim=-1)


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
