"""DCNv3 core in pure PyTorch.

The DCNv3 core samples, for every output pixel and every channel group, ``P``
points of a ``kernel_h x kernel_w`` grid moved by learned offsets, and sums the
bilinearly interpolated input at those points weighted by a modulation mask::

    out[n, y, x, g*Cg + c] = sum_p mask[n, y, x, g*P + p] *
        bilinear(input[n, :, :, g*Cg + c], loc[n, y, x, g, p])

with zero padding outside the image. Tensors are channels-last:
``input (N, H, W, G*Cg)``, ``offset (N, Ho, Wo, G*P*2)`` with ``(x, y)`` pairs,
``mask (N, Ho, Wo, G*P)``. The points are ordered with the x (width) index of
the kernel outer and the y index inner, as in the official InternImage kernels.

Implementation: each sampled point touches the four neighbouring input rows of
its group, so the whole op is one weighted gather-sum,
``F.embedding_bag(..., mode='sum', per_sample_weights=...)``, over a
zero-padded copy of the input whose rows are ``(n, y, x, g)`` vectors of
``Cg`` channels. The input gradient is the transposed gather-sum: sampled
points are sorted by the pixel they land on, and four more ``embedding_bag``
calls (one per bilinear corner) sum their weighted output gradients. The
offset and mask gradients follow in closed form from the per-corner dot
products of output gradient and input. Everything is vectorised over pixels,
groups and points; nothing loops in Python but the four corners.
"""
import warnings
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ['dcnv3_core_pytorch', 'dcnv3_output_size', 'check_dcnv3_inputs']


def dcnv3_output_size(height: int, width: int, kernel_h: int, kernel_w: int,
                      stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                      dilation_h: int, dilation_w: int) -> Tuple[int, int]:
    """Spatial output size of DCNv3, as for a convolution.

    Returns:
        tuple[int, int]: ``(Ho, Wo)``.
    """
    out_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) \
        // stride_h + 1
    out_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) \
        // stride_w + 1
    return out_h, out_w


def check_dcnv3_inputs(input: Tensor, offset: Tensor, mask: Tensor,
                       kernel_h: int, kernel_w: int, stride_h: int,
                       stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                       dilation_w: int, group: int, group_channels: int,
                       remove_center: bool) -> Tuple[int, int, int]:
    """Validate the arguments of the DCNv3 core.

    Raises:
        ValueError: On a bad shape, option or device, naming the argument.

    Returns:
        tuple[int, int, int]: Output height, output width and the number of
        sampling points ``P`` per group.
    """
    for name, value in (('kernel_h', kernel_h), ('kernel_w', kernel_w),
                        ('stride_h', stride_h), ('stride_w', stride_w),
                        ('dilation_h', dilation_h), ('dilation_w', dilation_w),
                        ('group', group), ('group_channels', group_channels)):
        if value < 1:
            raise ValueError(f'DCNv3: {name} must be >= 1, got {value}')
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f'DCNv3: pad must be >= 0, got ({pad_h}, {pad_w})')
    if remove_center and (kernel_h % 2 == 0 or kernel_w % 2 == 0):
        raise ValueError('DCNv3: remove_center needs an odd kernel size, got '
                         f'{kernel_h}x{kernel_w}')
    if input.dim() != 4:
        raise ValueError('DCNv3: input must be (N, H, W, C) channels-last, '
                         f'got shape {tuple(input.shape)}')
    n, height, width, channels = input.shape
    if channels != group * group_channels:
        raise ValueError(
            f'DCNv3: input has {channels} channels (shape '
            f'{tuple(input.shape)}) but group * group_channels = {group} * '
            f'{group_channels} = {group * group_channels}')
    out_h, out_w = dcnv3_output_size(height, width, kernel_h, kernel_w,
                                     stride_h, stride_w, pad_h, pad_w,
                                     dilation_h, dilation_w)
    if out_h < 1 or out_w < 1:
        raise ValueError(f'DCNv3: input of shape {tuple(input.shape)} is '
                         'smaller than the dilated kernel')
    points = kernel_h * kernel_w - int(bool(remove_center))
    for name, tensor, last in (('offset', offset, group * points * 2),
                               ('mask', mask, group * points)):
        expected = (n, out_h, out_w, last)
        if tuple(tensor.shape) != expected:
            raise ValueError(f'DCNv3: {name} must have shape {expected} '
                             f'(N, Ho, Wo, group*P{"*2" * (name == "offset")}'
                             f' with P={points}), got {tuple(tensor.shape)}')
        if tensor.device != input.device:
            raise ValueError(f'DCNv3: {name} is on {tensor.device} but input '
                             f'is on {input.device}')
    return out_h, out_w, points


def _opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the op computes in: fp64 stays, everything else uses fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Zero border of the padded input table. A location outside (-1, size) on
# either axis (the official kernels' bounds check ``loc > -1 && loc < size``,
# also ``loc == -1`` exactly, and NaN) is moved to -2, or clamped to ``size``:
# all four of its bilinear corners fall in the border, and it contributes zero
# with zero gradients, as in the CUDA kernels.
_BORDER = 2


def _kernel_points(kernel_h: int, kernel_w: int, dilation_h: int,
                   dilation_w: int, remove_center: bool, dtype: torch.dtype,
                   device: torch.device) -> Tuple[Tensor, Tensor]:
    """Kernel grid ``(kx, ky)`` in pixels, x-major as the official kernels."""
    kx = torch.arange(kernel_w, dtype=dtype, device=device) * dilation_w
    ky = torch.arange(kernel_h, dtype=dtype, device=device) * dilation_h
    kx = kx.repeat_interleave(kernel_h)
    ky = ky.repeat(kernel_w)
    if remove_center:
        center = (kernel_w // 2) * kernel_h + kernel_h // 2
        keep = torch.arange(kernel_h * kernel_w, device=device) != center
        kx, ky = kx[keep], ky[keep]
    return kx, ky


def _sampling_plan(offset: Tensor, in_shape: Tuple[int, ...],
                   cfg: tuple) -> Tuple[Tensor, Tensor, Tensor]:
    """Top-left bilinear corner of every sampling point, and the fractions.

    Returns:
        tuple: ``base`` (B, P) row of the top-left corner in the padded
        table (int32, or int64 for huge inputs), and ``frac_x``, ``frac_y``
        (B, P) the position inside that cell, with ``B = N * Ho * Wo * G``.
    """
    (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
     dilation_w, group, _, offset_scale, remove_center) = cfg
    n, height, width, _ = in_shape
    _, out_h, out_w, _ = offset.shape
    dtype = _opmath_dtype(offset.dtype)
    device = offset.device
    kx, ky = _kernel_points(kernel_h, kernel_w, dilation_h, dilation_w,
                            remove_center, dtype, device)
    points = kx.numel()
    batch = n * out_h * out_w * group
    offset = offset.view(n, out_h, out_w, group, points, 2).to(dtype)

    def locate(axis, out_size, stride, pad, dilation, kernel, size):
        """Clamped location along one axis: cell index and fraction."""
        # undisplaced location in padded coordinates; ``half * (1 - s)``
        # keeps the kernel centred when the offset scale ``s`` stretches it
        half = (dilation * (kernel - 1)) // 2
        start = torch.arange(out_size, dtype=dtype, device=device) * stride
        start += half * (1 - offset_scale) - pad + _BORDER
        start = start.view((1, -1, 1, 1, 1) if axis else (1, 1, -1, 1, 1))
        grid = start + (ky if axis else kx) * offset_scale
        loc = torch.add(grid, offset[..., axis], alpha=offset_scale)
        loc = torch.where(loc > _BORDER - 1, loc, 0)
        loc = loc.clamp_(max=size + _BORDER).view(batch, points)
        cell = loc.floor()
        return cell, loc.sub_(cell)

    cell_x, frac_x = locate(0, out_w, stride_w, pad_w, dilation_w, kernel_w,
                            width)
    cell_y, frac_y = locate(1, out_h, stride_h, pad_h, dilation_h, kernel_h,
                            height)
    padded_w = width + 2 * _BORDER
    rows = n * (height + 2 * _BORDER) * padded_w * group
    itype = torch.int32 if rows < 2**31 else torch.int64
    # row of (n, y, x, g) in the padded table
    first_row = (
        torch.arange(n, dtype=itype, device=device).view(n, 1, 1) *
        (rows // n) +
        torch.arange(group, dtype=itype, device=device).view(1, group, 1))
    base = cell_y.to(itype).mul_(padded_w * group)
    base.add_(cell_x.to(itype), alpha=group)
    base.view(n, out_h * out_w, group, points).add_(first_row.unsqueeze(1))
    return base, frac_x, frac_y


def _corner_shifts(width: int, group: int) -> List[int]:
    """Table row offsets of the four bilinear corners (yx: 00, 01, 10, 11).
    """
    row = (width + 2 * _BORDER) * group
    return [0, group, row, row + group]


def _padded_table(input: Tensor, group_channels: int) -> Tensor:
    """Input with a zero border, as rows of ``group_channels`` (opmath)."""
    dtype = _opmath_dtype(input.dtype)
    border = (0, 0) + (_BORDER, ) * 4
    return F.pad(input.to(dtype), border).view(-1, group_channels)


@torch.library.custom_op('m3i_mm::dcnv3_corner_dots', mutates_args=())
def _corner_dots(grad_out: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """``dots[b, j] = <grad_out[b], table[index[b, j]]>``, (B, J).

    On CPU this is one sampled dense-dense matmul over the CSR pattern of
    ``index``; elsewhere, and where a row of ``index`` is longer than the
    table (tiny maps: torch 2.13's ``sampled_addmm`` then returns a wrong
    number of values), it is the per-sample-weight gradient of
    ``embedding_bag``. One custom op (``torch.ops.m3i_mm.dcnv3_corner_dots``,
    fake kernel below): ``torch.compile`` cannot trace sparse CSR tensors.

    Args:
        grad_out (Tensor): ``(B, Cg)``.
        table (Tensor): ``(R, Cg)``, ``grad_out``'s dtype.
        index (Tensor): ``(B, J)`` rows of ``table``, int32 or int64.

    Returns:
        Tensor: ``(B, J)``, ``grad_out``'s dtype.
    """
    batch, width = index.shape
    if index.device.type == 'cpu' and width <= table.shape[0]:
        crow = torch.arange(0, batch * width + 1, width, dtype=index.dtype)
        with warnings.catch_warnings():
            # 'Sparse CSR tensor support is in beta state'
            warnings.simplefilter('ignore', UserWarning)
            dots = torch.sparse_csr_tensor(
                crow,
                index.view(-1),
                grad_out.new_zeros(batch * width), (batch, table.shape[0]),
                check_invariants=False)
            # in place (out=): no copy of the pattern
            torch.sparse.sampled_addmm(
                dots, grad_out, table.t(), beta=0.0, out=dots)
        return dots.values().view(batch, width)
    # what autograd gives the per-sample weights of embedding_bag (no
    # autograd in a custom op's kernel): bag b holds the points of row b
    flat = index.reshape(-1)
    offsets = torch.arange(
        0, batch * width, width, dtype=index.dtype, device=index.device)
    bag_of_point = torch.arange(
        batch, dtype=index.dtype, device=index.device).repeat_interleave(width)
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_out, table, flat, offsets, bag_of_point, 0)
    return dots.view(batch, width)


@_corner_dots.register_fake
def _(grad_out: Tensor, table: Tensor, index: Tensor) -> Tensor:
    return grad_out.new_empty(index.shape)


def _sort_rows(keys: Tensor, rows: int) -> Tuple[Tensor, Tensor]:
    """Stable sort of table rows ``keys < rows``: values and permutation.

    On CPU, ``torch.sort`` uses a radix sort from 32768 elements on and a
    several times slower comparison sort below; short inputs are padded
    with ``rows`` (sorted last, then dropped) to take the fast path.
    """
    num = keys.numel()
    fast = 32768
    if keys.device.type == 'cpu' and 1024 < num < fast:
        keys = torch.cat([keys, keys.new_full((fast - num, ), rows)])
    values, order = keys.sort(stable=True)
    return values[:num], order[:num]


def _transposed_gather_sum(grad_out: Tensor, index: Tensor, weights: Tensor,
                           shifts: Sequence[int], rows: int) -> Tensor:
    """Adjoint of the forward gather-sum.

    ``grad_table[index[b, k, p]] += weights[b, k, p] * grad_out[b]`` without
    atomics: points are sorted by their top-left corner ``index[:, 0]`` so
    that each table row is one bag of an ``embedding_bag`` over
    ``grad_out``; the four corners are four such calls added at their row
    ``shifts`` (the first is 0).
    """
    batch, _, points = index.shape
    sorted_base, order = _sort_rows(index[:, 0].reshape(-1), rows)
    # first sorted point of every row: a bincount's exclusive cumsum, but
    # of a fixed size (bincount's depends on the values, a graph break)
    offsets = torch.searchsorted(
        sorted_base,
        torch.arange(rows, dtype=sorted_base.dtype, device=index.device))
    # (4, B*P) corner weights in sorted point order, each row contiguous.
    corner_w = weights.transpose(0, 1).reshape(4, -1).index_select(1, order)
    # bag (b) of every sorted point, gathered rather than divided
    bag_of_point = torch.arange(
        batch, device=index.device).repeat_interleave(points)
    bag_of_point = bag_of_point.index_select(0, order)
    for k, shift in enumerate(shifts):
        part = F.embedding_bag(
            bag_of_point,
            grad_out,
            offsets,
            per_sample_weights=corner_w[k],
            mode='sum')
        if k == 0:
            grad_table = part
        else:
            grad_table[shift:] += part[:rows - shift]
    return grad_table


class _DCNv3PyTorch(torch.autograd.Function):
    """Autograd function of the pure-PyTorch DCNv3 core.

    It keeps the sampling plan for the backward pass (corner rows, fractions
    and weights: 10 numbers per sampling point) instead of recomputing it.
    """

    @staticmethod
    def forward(ctx, input: Tensor, offset: Tensor, mask: Tensor,
                cfg: tuple) -> Tensor:
        group, group_channels = cfg[8], cfg[9]
        n, height, width, channels = input.shape
        _, out_h, out_w, _ = offset.shape
        ctx.cfg = cfg
        ctx.shapes = (input.shape, offset.shape)
        ctx.dtypes = (input.dtype, offset.dtype, mask.dtype)
        base, frac_x, frac_y = _sampling_plan(offset, input.shape, cfg)
        batch, points = base.shape
        mask = mask.view(batch, points).to(frac_x.dtype)
        # bilinear corner weights times mask, (B, 4 (yx), P)
        mask_y1 = mask * frac_y
        weights_y = torch.stack((mask - mask_y1, mask_y1), 1)
        weights_x = torch.stack((1 - frac_x, frac_x), 1)
        weights = weights_y.unsqueeze(2) * weights_x.unsqueeze(1)
        weights = weights.view(batch, 4, points)
        table = _padded_table(input, group_channels)
        shifts = base.new_tensor(_corner_shifts(width, group))
        index = base.unsqueeze(1) + shifts.view(1, 4, 1)
        out = F.embedding_bag(
            index.view(batch, -1),
            table,
            per_sample_weights=weights.view(batch, -1),
            mode='sum')
        ctx.save_for_backward(table, mask, index, frac_x, frac_y, weights)
        return out.view(n, out_h, out_w, channels).to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        table, mask, index, frac_x, frac_y, weights = ctx.saved_tensors
        group, group_channels, offset_scale = ctx.cfg[8:11]
        in_shape, offset_shape = ctx.shapes
        n, height, width, _ = in_shape
        batch, _, points = index.shape
        grad_out = grad_out.reshape(batch, group_channels).to(table.dtype)
        grad_input = grad_offset = grad_mask = None

        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # dots[b, y, x, p]: grad_out[b] . corner (y, x) of point p
            dots = _corner_dots(grad_out, table, index.view(batch, -1))
            dots = dots.view(batch, 2, 2, points)
            # interpolate along x then y (the sampled value, for the mask)
            # and take differences (its derivatives, for the offsets)
            along_x = torch.lerp(dots[:, :, 0], dots[:, :, 1],
                                 frac_x.unsqueeze(1))
            grad_mask = torch.lerp(along_x[:, 0], along_x[:, 1], frac_y)
            diff_x = dots[:, :, 1] - dots[:, :, 0]
            grad_x = torch.lerp(diff_x[:, 0], diff_x[:, 1], frac_y)
            grad_y = along_x[:, 1] - along_x[:, 0]
            grad_offset = torch.stack((grad_x, grad_y), -1).mul_(
                (mask * offset_scale).unsqueeze(-1))
            grad_offset = grad_offset.view(offset_shape).to(ctx.dtypes[1])
            grad_mask = grad_mask.view(offset_shape[:3] + (-1, )).to(
                ctx.dtypes[2])

        if ctx.needs_input_grad[0]:
            shifts = _corner_shifts(width, group)
            grad_table = _transposed_gather_sum(grad_out, index, weights,
                                                shifts, table.shape[0])
            b = _BORDER
            grad_input = grad_table.view(n, height + 2 * b, width + 2 * b,
                                         -1)[:, b:-b, b:-b].to(ctx.dtypes[0])
        return grad_input, grad_offset, grad_mask, None


def dcnv3_core_pytorch(input: Tensor,
                       offset: Tensor,
                       mask: Tensor,
                       kernel_h: int,
                       kernel_w: int,
                       stride_h: int,
                       stride_w: int,
                       pad_h: int,
                       pad_w: int,
                       dilation_h: int,
                       dilation_w: int,
                       group: int,
                       group_channels: int,
                       offset_scale: float,
                       remove_center: bool = False) -> Tensor:
    """DCNv3 core, pure PyTorch (any device, fp64/fp32/fp16/bf16, autograd).

    Computes in fp32 (fp64 for fp64 inputs) and returns the input dtype.

    Args:
        input (Tensor): ``(N, H, W, group * group_channels)``.
        offset (Tensor): ``(N, Ho, Wo, group * P * 2)``, ``(x, y)`` pairs in
            pixels, before ``offset_scale``.
        mask (Tensor): ``(N, Ho, Wo, group * P)`` modulation weights.
        kernel_h (int): Kernel height.
        kernel_w (int): Kernel width.
        stride_h (int): Vertical stride.
        stride_w (int): Horizontal stride.
        pad_h (int): Zero padding on the top and bottom.
        pad_w (int): Zero padding on the left and right.
        dilation_h (int): Vertical dilation of the kernel grid.
        dilation_w (int): Horizontal dilation of the kernel grid.
        group (int): Number of groups sharing offsets and mask.
        group_channels (int): Channels per group.
        offset_scale (float): Scale of the kernel grid and offsets.
        remove_center (bool): Drop the kernel centre, ``P = kh * kw - 1``.
            Defaults to False.

    Returns:
        Tensor: ``(N, Ho, Wo, group * group_channels)``.
    """
    check_dcnv3_inputs(input, offset, mask, kernel_h, kernel_w, stride_h,
                       stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                       group_channels, remove_center)
    cfg = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
           dilation_w, group, group_channels, float(offset_scale),
           bool(remove_center))
    return _DCNv3PyTorch.apply(input, offset.contiguous(), mask.contiguous(),
                               cfg)
