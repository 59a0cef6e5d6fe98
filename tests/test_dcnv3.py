"""DCNv3 operator: pure-PyTorch core, dispatch, module, CUDA build.

The core is checked against a deliberately naive per-point loop (numpy,
written from the definition of the official kernels), with gradcheck in
float64, and against closed forms (zero offsets and a uniform mask make
DCNv3 a 3x3 box filter). CUDA tests run where a GPU and the extension exist;
the nvcc compile check runs wherever nvcc does.
"""
import glob
import itertools
import math
import os
import os.path as osp
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import load_script
from m3i_mm.ops.dcnv3 import build as dcnv3_build
from m3i_mm.ops.dcnv3.dispatch import cuda_ext_available, dcnv3_core
from m3i_mm.ops.dcnv3.functional import dcnv3_core_pytorch, dcnv3_output_size
from m3i_mm.ops.dcnv3.modules import DCNv3
from m3i_mm.registry import MODELS

# kernel (h, w), stride (h, w), pad (h, w), dilation (h, w), offset scale,
# remove centre
CASES = {
    'k3': ((3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),
    'stride2': ((3, 3), (2, 2), (1, 1), (1, 1), 1.0, False),
    'dilation2_scale2': ((3, 3), (1, 1), (2, 2), (2, 2), 2.0, False),
    'remove_center': ((3, 3), (1, 1), (1, 1), (1, 1), 1.0, True),
    'k3x5_mixed': ((3, 5), (2, 1), (1, 2), (1, 2), 0.5, True),
    'k2_no_pad': ((2, 2), (1, 1), (0, 0), (1, 1), 1.0, False),
}


def naive_dcnv3(input, offset, mask, kernel, stride, pad, dilation, group,
                group_channels, offset_scale, remove_center):
    """One output pixel, group and point at a time, corners checked by hand.

    Returns:
        tuple: Output (float64 tensor) and the number of bilinear corners
        that fell outside the image.
    """
    x, off, msk = (t.detach().double().numpy() for t in (input, offset, mask))
    n, height, width, channels = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    # x-major point order, as the official kernels
    points = [(i, j) for i in range(kw) for j in range(kh)
              if not (remove_center and (i, j) == (kw // 2, kh // 2))]
    out = np.zeros((n, out_h, out_w, channels))
    outside = 0
    for b, oy, ox, g, (p, (i, j)) in itertools.product(
            range(n), range(out_h), range(out_w), range(group),
            enumerate(points)):
        k = g * len(points) + p  # (group, point) column of offset and mask
        dx, dy = off[b, oy, ox, 2 * k:2 * k + 2]
        # kernel centre + (kernel point + offset) * scale, in input pixels
        half_h, half_w = dh * (kh - 1) // 2, dw * (kw - 1) // 2
        ly = oy * sh - ph + half_h + (j * dh - half_h + dy) * offset_scale
        lx = ox * sw - pw + half_w + (i * dw - half_w + dx) * offset_scale
        y0, x0 = math.floor(ly), math.floor(lx)
        chans = slice(g * group_channels, (g + 1) * group_channels)
        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
            if 0 <= yy < height and 0 <= xx < width:
                weight = (1 - abs(ly - yy)) * (1 - abs(lx - xx))
                value = weight * x[b, yy, xx, chans]
                out[b, oy, ox, chans] += msk[b, oy, ox, k] * value
            else:
                outside += 1
    return torch.from_numpy(out), outside


def make_inputs(case,
                n=2,
                height=6,
                width=7,
                group=2,
                group_channels=3,
                offset_std=3.0,
                dtype=torch.float64,
                seed=0):
    kernel, stride, pad, dilation, _, remove_center = case
    out_h, out_w = dcnv3_output_size(height, width, *kernel, *stride, *pad,
                                     *dilation)
    points = kernel[0] * kernel[1] - int(remove_center)
    gen = torch.Generator().manual_seed(seed)
    input = torch.randn(
        n, height, width, group * group_channels, generator=gen, dtype=dtype)
    offset = torch.randn(
        n, out_h, out_w, group * points * 2, generator=gen,
        dtype=dtype) * offset_std
    mask = torch.rand(
        n, out_h, out_w, group * points, generator=gen, dtype=dtype)
    return input, offset, mask


def core_args(case, group=2, group_channels=3):
    kernel, stride, pad, dilation, scale, remove_center = case
    return (*kernel, *stride, *pad, *dilation, group, group_channels, scale,
            remove_center)


@pytest.mark.parametrize('name', list(CASES))
def test_matches_naive_loop(name):
    case = CASES[name]
    input, offset, mask = make_inputs(case)
    expected, outside = naive_dcnv3(input, offset, mask, *case[:4], 2, 3,
                                    *case[4:])
    assert outside > 0, 'offsets must also point outside the image'
    out = dcnv3_core_pytorch(input, offset, mask, *core_args(case))
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('name', ['k3', 'dilation2_scale2', 'k3x5_mixed'])
def test_gradcheck_float64(name):
    case = CASES[name]
    inputs = [
        t.requires_grad_() for t in make_inputs(
            case,
            n=1,
            height=4,
            width=5,
            group=2,
            group_channels=2,
            offset_std=1.5)
    ]
    assert torch.autograd.gradcheck(
        lambda *t: dcnv3_core_pytorch(*t, *core_args(case, 2, 2)), inputs)


def test_matches_grid_sample_formulation_with_gradients():
    """Against the official reference's grid_sample formulation (the
    baseline of benchmarks/dcnv3.py), values and gradients, on a size whose
    backward pads its sort (1024 < points < 32768)."""
    benchmark = load_script('benchmarks', 'dcnv3.py')
    inputs = make_inputs(
        CASES['k3'], n=1, height=16, width=16, dtype=torch.float32)
    ours = [t.clone().requires_grad_() for t in inputs]
    theirs = [t.clone().requires_grad_() for t in inputs]
    out = dcnv3_core_pytorch(*ours, *core_args(CASES['k3']))
    expected = benchmark.grid_sample_dcnv3(*theirs, 2, 3)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3)



def reference_dcnv3(input, offset, mask, kernel, pad, group, group_channels):
    """Stride 1, dilation 1, scale 1, one output pixel and point at a time,
    in torch ops so that autograd gives the reference gradients.

    Follows the CUDA kernels: a point counts only inside ``(-1, H) x (-1, W)``
    (``loc == -1`` gives 0), the bilinear fraction is ``loc - floor(loc)``
    (at an integer location the derivative is the right-hand one), corners
    outside the image are zero.
    """
    n, height, width, _ = input.shape
    (kh, kw), (ph, pw) = kernel, pad
    out_h, out_w = height + 2 * ph - kh + 1, width + 2 * pw - kw + 1
    points = [(i, j) for i in range(kw) for j in range(kh)]  # x-major
    rows = []
    for b, oy, ox in itertools.product(range(n), range(out_h), range(out_w)):
        pixel = []
        for g in range(group):
            acc = input.new_zeros(group_channels)
            for p, (i, j) in enumerate(points):
                k = g * len(points) + p
                lx = ox - pw + i + offset[b, oy, ox, 2 * k]
                ly = oy - ph + j + offset[b, oy, ox, 2 * k + 1]
                if not (-1 < ly < height and -1 < lx < width):
                    continue
                y0, x0 = math.floor(ly.item()), math.floor(lx.item())
                fy, fx = ly - y0, lx - x0
                for yy, xx, w in ((y0, x0, (1 - fy) * (1 - fx)),
                                  (y0, x0 + 1, (1 - fy) * fx),
                                  (y0 + 1, x0, fy * (1 - fx)),
                                  (y0 + 1, x0 + 1, fy * fx)):
                    if 0 <= yy < height and 0 <= xx < width:
                        value = input[b, yy, xx, g * group_channels:
                                      (g + 1) * group_channels]
                        acc = acc + mask[b, oy, ox, k] * w * value
            pixel.append(acc)
        rows.append(torch.cat(pixel))
    return torch.stack(rows).view(n, out_h, out_w, -1)


# (input shape, kernel, pad, group): maps smaller than the padded kernel
SMALL_MAPS = {
    '1x2_k3': ((1, 1, 2, 1), 3, 1, 1),
    '1x1x2ch_k3': ((1, 1, 1, 2), 3, 1, 1),
    '1x1_4ch_k3': ((1, 1, 1, 4), 3, 1, 1),
    '3x3_k5_g2': ((1, 3, 3, 8), 5, 2, 2),
}


@pytest.mark.parametrize('name', list(SMALL_MAPS))
@pytest.mark.parametrize('offsets', ['zero', 'random'])
def test_small_maps_gradients_match_reference(name, offsets):
    """Backward on maps smaller than the padded kernel (it raised
    ``shape '[1, 36]' is invalid for input of size 25``): gradients of the
    reference formula, and gradcheck where no point is on a kink."""
    shape, kernel, pad, group = SMALL_MAPS[name]
    points = kernel * kernel
    gen = torch.Generator().manual_seed(0)
    input = torch.randn(*shape, generator=gen, dtype=torch.float64)
    side = shape[:3] + (group * points, )
    mask = torch.full(side, 1 / points, dtype=torch.float64)
    offset = torch.zeros(side[:3] + (2 * side[3], ), dtype=torch.float64)
    if offsets == 'random':
        offset = torch.rand(offset.shape, generator=gen,
                            dtype=torch.float64) * 0.8 + 0.1  # off the grid
        mask = torch.rand(side, generator=gen, dtype=torch.float64)
    args = (kernel, kernel, 1, 1, pad, pad, 1, 1, group, shape[3] // group,
            1.0)
    ours = [t.clone().requires_grad_() for t in (input, offset, mask)]
    ref = [t.clone().requires_grad_() for t in (input, offset, mask)]
    out = dcnv3_core_pytorch(*ours, *args)
    expected = reference_dcnv3(*ref, (kernel, kernel), (pad, pad), group,
                               shape[3] // group)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
    if offsets == 'random':
        assert torch.autograd.gradcheck(
            lambda *t: dcnv3_core_pytorch(*t, *args),
            [t.detach().requires_grad_() for t in ours])


@pytest.mark.parametrize('kwargs,size', [
    (dict(channels=4, group=1), 1),
    (dict(channels=8, kernel_size=5, pad=2, group=2), 3),
])
def test_module_backward_on_small_maps(kwargs, size):
    module = DCNv3(**kwargs).double()
    x = torch.randn(1, size, size, kwargs['channels'], dtype=torch.float64)
    module(x.requires_grad_()).square().sum().backward()
    assert x.grad.shape == x.shape
    assert module.offset.weight.grad is not None


def test_location_on_the_top_left_padding_edge_has_zero_gradient():
    """Zero offsets on a 3x3 map: output (1, 0), kernel point (dx=-1, dy=0)
    samples at x == -1 exactly; the CUDA kernels (bounds test ``loc > -1``)
    give it zero value and zero gradients. The PyTorch path gave the offset
    gradient input[1, 0] = +4.0."""
    input = torch.arange(1., 10., dtype=torch.float64).view(1, 3, 3, 1)
    offset = torch.zeros(1, 3, 3, 18, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 3, 3, 9, dtype=torch.float64, requires_grad=True)
    out = dcnv3_core_pytorch(input, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 1,
                             1, 1.0)
    grad = torch.zeros_like(out)
    grad[0, 1, 0] = 1
    out.backward(grad)
    point = 0 * 3 + 1  # x-major: kernel column i=0 (dx=-1), row j=1 (dy=0)
    assert offset.grad[0, 1, 0, 2 * point].item() == 0.0
    assert mask.grad[0, 1, 0, point].item() == 0.0
    # its neighbour to the right (dx=0, dy=0) samples input[1, 0] = 4 and
    # has the one-sided derivative input[1, 1] - input[1, 0] = 1
    centre = 1 * 3 + 1
    assert offset.grad[0, 1, 0, 2 * centre].item() == 1.0
    assert mask.grad[0, 1, 0, centre].item() == 4.0

def test_points_outside_have_zero_gradients():
    case = CASES['k3']
    input, offset, mask = make_inputs(case, n=1, height=4, width=4)
    offset = torch.full_like(offset, 10.0).requires_grad_()  # all outside
    mask.requires_grad_()
    input.requires_grad_()
    out = dcnv3_core_pytorch(input, offset, mask, *core_args(case))
    out.sum().backward()
    assert out.abs().max() == 0
    for tensor in (input, offset, mask):
        assert tensor.grad.abs().max() == 0


def box_filter(x):
    """3x3 mean with zero padding of an (N, H, W, C) tensor."""
    out = F.avg_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=True)
    return out.permute(0, 2, 3, 1)


def test_zero_offsets_uniform_mask_is_box_filter():
    input = torch.randn(2, 5, 6, 8)
    offset = torch.zeros(2, 5, 6, 2 * 9 * 2)
    mask = torch.full((2, 5, 6, 2 * 9), 1 / 9)
    out = dcnv3_core_pytorch(input, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4,
                             1.0)
    torch.testing.assert_close(out, box_filter(input))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_close_to_fp32(dtype):
    case = CASES['k3']
    inputs = make_inputs(
        case,
        height=8,
        width=8,
        group=2,
        group_channels=8,
        offset_std=1.0,
        dtype=torch.float32)
    inputs = [t.to(dtype).requires_grad_() for t in inputs]
    reference = [t.detach().float().requires_grad_() for t in inputs]
    args = core_args(case, 2, 8)
    out = dcnv3_core_pytorch(*inputs, *args)
    ref = dcnv3_core_pytorch(*reference, *args)
    assert out.dtype == dtype
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    for low, high in zip(inputs, reference):
        assert low.grad.dtype == dtype
        scale = high.grad.abs().max()
        torch.testing.assert_close(
            low.grad.float() / scale, high.grad / scale, rtol=tol, atol=tol)


def test_bad_shapes_raise_with_shapes():
    input, offset, mask = make_inputs(CASES['k3'])
    args = core_args(CASES['k3'])
    with pytest.raises(
            ValueError, match=r'input has 6 channels.*\(2, 6, 7, 6\)'):
        dcnv3_core_pytorch(input, offset, mask, *args[:8], 3, 3, *args[10:])
    with pytest.raises(
            ValueError,
            match=r'offset must have shape'
            r' \(2, 6, 7, 36\).*got \(2, 6, 7, 35\)'):
        dcnv3_core_pytorch(input, offset[..., :-1], mask, *args)
    with pytest.raises(ValueError, match=r'mask must have shape'):
        dcnv3_core_pytorch(input, offset, mask[:, :3], *args)
    with pytest.raises(ValueError, match='odd kernel'):
        dcnv3_core_pytorch(input, offset, mask, 2, 2, *args[2:11], True)


def compiled_equals_eager(fn, inputs):
    """Forward and input gradients of ``fn`` compiled (``aot_eager``: eager
    kernels) equal eager ones bit for bit; returns dynamo's explanation."""
    torch._dynamo.reset()
    # inputs that need gradients: dynamo traces the backward too
    explained = torch._dynamo.explain(fn)(
        *[t.detach().requires_grad_() for t in inputs])
    results = []
    for run in (fn, torch.compile(fn, backend='aot_eager', fullgraph=True)):
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = run(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append([out.detach()] + [t.grad for t in leaves])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    return explained


@pytest.mark.parametrize('size', [(6, 7), (1, 1)])  # sparse / tiny-map dots
def test_pytorch_core_compiles_in_one_graph(size):
    """No graph break in the forward or backward pass of the PyTorch core
    (before: the backward's corner dots, sparse CSR tensors under
    ``warnings.catch_warnings`` or ``autograd.grad``, and the input
    gradient's ``bincount``, of data-dependent size, broke it at every
    call)."""
    case = CASES['k3']
    inputs = make_inputs(case, height=size[0], width=size[1],
                         dtype=torch.float32)
    explained = compiled_equals_eager(
        lambda *t: dcnv3_core_pytorch(*t, *core_args(case)), inputs)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize('width', [8, 36])  # sparse CSR / embedding_bag
def test_corner_dots_op(width):
    """The custom op behind the backward's corner dots: schema, fake kernel
    and compiled dispatch, on both of its branches."""
    gen = torch.Generator().manual_seed(0)
    grad_out = torch.randn(5, 4, generator=gen)
    table = torch.randn(10, 4, generator=gen)
    index = torch.randint(0, 10, (5, width), generator=gen,
                          dtype=torch.int32)
    dots = torch.ops.m3i_mm.dcnv3_corner_dots(grad_out, table, index)
    torch.testing.assert_close(
        dots, torch.einsum('bc,bjc->bj', grad_out, table[index.long()]))
    torch.library.opcheck(torch.ops.m3i_mm.dcnv3_corner_dots.default,
                          (grad_out, table, index))


def test_dispatch_on_cpu():
    input, offset, mask = make_inputs(CASES['k3'], dtype=torch.float32)
    args = core_args(CASES['k3'])
    expected = dcnv3_core_pytorch(input, offset, mask, *args)
    for backend in ('auto', 'pytorch'):
        torch.testing.assert_close(
            dcnv3_core(input, offset, mask, *args, backend=backend), expected)
    with pytest.raises(ValueError, match='needs CUDA tensors'):
        dcnv3_core(input, offset, mask, *args, backend='cuda')
    with pytest.raises(ValueError, match='backend must be one of'):
        dcnv3_core(input, offset, mask, *args, backend='triton')
    assert isinstance(cuda_ext_available(), bool)


def test_dispatch_falls_back_once_without_extension(monkeypatch):
    from types import SimpleNamespace

    from m3i_mm.ops.dcnv3 import dispatch
    cuda_input = SimpleNamespace(is_cuda=True, device='cuda:0')
    monkeypatch.setattr(dispatch, '_load_ext', lambda: None)
    monkeypatch.setattr(dispatch, '_fallback_warned', False)
    with pytest.warns(UserWarning, match='_ext_dcnv3 is not built'):
        assert not dispatch._use_cuda_ext(cuda_input, 'auto')
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # warned once only
        assert not dispatch._use_cuda_ext(cuda_input, 'auto')
    with pytest.raises(RuntimeError, match='not built'):
        dispatch._use_cuda_ext(cuda_input, 'cuda')
    monkeypatch.setattr(dispatch, '_load_ext', lambda: object())
    assert dispatch._use_cuda_ext(cuda_input, 'auto')
    assert not dispatch._use_cuda_ext(cuda_input, 'pytorch')


class StandInExtension:
    """CPU stand-in for ``m3i_mm._ext_dcnv3``: its signatures, a toy op
    (``input * sum(mask) + sum(offset)`` over the last axis, for stride 1
    and size-keeping padding), opaque to dynamo as compiled code is."""

    def __init__(self):
        self.calls = []

    @torch.compiler.disable
    def forward(self, input, offset, mask, *cfg):
        self.calls.append(('forward', cfg))
        return input * mask.sum(-1, True) + offset.sum(-1, True)

    @torch.compiler.disable
    def backward(self, input, offset, mask, grad_out, *cfg):
        self.calls.append(('backward', cfg))
        return (grad_out * mask.sum(-1, True),
                grad_out.sum(-1, True).expand_as(offset).contiguous(),
                (grad_out * input).sum(-1, True).expand_as(mask).contiguous())


@pytest.fixture
def stand_in_extension(monkeypatch):
    from m3i_mm.ops.dcnv3 import dispatch
    extension = StandInExtension()
    monkeypatch.setattr(dispatch, '_load_ext', lambda: extension)
    return extension


def test_extension_kernels_are_custom_ops(stand_in_extension):
    """Schema, fake kernels (output shapes without running the extension),
    registered backward and compiled dispatch of the extension's ops."""
    case = CASES['k3']
    input, offset, mask = (t.float().requires_grad_()
                           for t in make_inputs(case, group_channels=3))
    cfg = (list(core_args(case)[:10]), 1.0, False)
    torch.library.opcheck(torch.ops.m3i_mm.dcnv3_cuda.default,
                          (input, offset, mask, *cfg))
    grad_out = torch.randn_like(input)
    torch.library.opcheck(
        torch.ops.m3i_mm.dcnv3_cuda_backward.default,
        (input.detach(), offset.detach(), mask.detach(), grad_out, *cfg))
    # every gradient reaches its input
    out = torch.ops.m3i_mm.dcnv3_cuda(input, offset, mask, *cfg)
    toy = input * mask.sum(-1, True) + offset.sum(-1, True)
    torch.testing.assert_close(out, toy, rtol=0, atol=0)
    grads = torch.autograd.grad(out, (input, offset, mask), grad_out)
    for got, want in zip(grads, torch.autograd.grad(toy, (input, offset, mask),
                                                    grad_out)):
        torch.testing.assert_close(got, want)
    # the last argument picks the fast kernels (not the baseline's)
    assert stand_in_extension.calls[-1] == ('backward',
                                            (*core_args(case)[:10], 1.0,
                                             False, False))
    # the fake kernel's shapes, with a stride (meta tensors)
    case = CASES['k3x5_mixed']
    meta = [t.to('meta') for t in make_inputs(case, group_channels=3)]
    out = torch.ops.m3i_mm.dcnv3_cuda(*meta, list(core_args(case)[:10]), 0.5,
                                      True)
    assert out.shape == (2, 3, 3, 6) and out.dtype == torch.float64


def test_extension_path_compiles_in_one_graph(stand_in_extension,
                                              monkeypatch):
    """``dcnv3_core`` on the extension: one graph (before: a break at the
    extension's forward) and compiled equals eager, forward and backward."""
    from m3i_mm.ops.dcnv3 import dispatch
    monkeypatch.setattr(dispatch, '_use_cuda_ext', lambda *_: True)
    case = CASES['k3']
    explained = compiled_equals_eager(
        lambda *t: dcnv3_core(*t, *core_args(case), backend='cuda'),
        make_inputs(case, dtype=torch.float32))
    assert explained.graph_break_count == 0, explained.break_reasons
    # the compiled step ran the extension's kernels, with their arguments
    cfg = (*core_args(case)[:10], 1.0, False, False)
    assert stand_in_extension.calls[-2:] == [('forward', cfg),
                                             ('backward', cfg)]


def test_extension_check_is_a_constant_to_compile(monkeypatch):
    """Whether the extension is built is decided (and the fallback warned
    about, once) while tracing, without a graph break."""
    from m3i_mm.ops.dcnv3 import dispatch
    monkeypatch.setattr(dispatch, '_load_ext', lambda: None)
    monkeypatch.setattr(dispatch, '_fallback_warned', False)
    torch._dynamo.reset()
    with pytest.warns(UserWarning, match='_ext_dcnv3 is not built'):
        explained = torch._dynamo.explain(
            lambda x: x + dispatch._ext_or_warn_once())(torch.zeros(1))
    assert explained.graph_break_count == 0, explained.break_reasons


def test_module_at_init_is_projected_box_filter():
    module = MODELS.build(dict(type='DCNv3', channels=8, group=2))
    x = torch.randn(2, 5, 6, 8)
    expected = module.output_proj(box_filter(module.input_proj(x)))
    torch.testing.assert_close(module(x), expected)


def test_module_center_feature_scale_blends_half_at_init():
    module = DCNv3(
        channels=8, group=2, center_feature_scale=True, dw_kernel_size=5)
    x = torch.randn(1, 4, 4, 8)
    projected = module.input_proj(x)
    expected = module.output_proj(0.5 * box_filter(projected) +
                                  0.5 * projected)
    torch.testing.assert_close(module(x), expected)


def test_module_trains_offsets_and_mask():
    module = DCNv3(channels=8, group=2)
    module(torch.randn(1, 4, 4, 8)).square().sum().backward()
    # zero-initialised offsets still receive gradients
    assert module.offset.weight.grad.abs().sum() > 0
    assert module.mask.weight.grad.abs().sum() > 0


def test_module_rejects_bad_config_and_input():
    with pytest.raises(ValueError, match='divisible by group'):
        DCNv3(channels=10, group=4)
    with pytest.raises(ValueError, match='stride=2'):
        DCNv3(channels=8, group=2, stride=2)
    with pytest.raises(ValueError, match=r'\(1, 8, 4, 4\)'):
        DCNv3(channels=8, group=2)(torch.randn(1, 8, 4, 4))


needs_cuda_ext = pytest.mark.skipif(
    not (torch.cuda.is_available() and cuda_ext_available()),
    reason='needs a GPU and the m3i_mm._ext_dcnv3 extension')


@needs_cuda_ext
@pytest.mark.parametrize('name', list(CASES))
@pytest.mark.parametrize(
    'dtype', [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_pytorch(name, dtype):
    case = CASES[name]
    inputs = [
        t.cuda().to(dtype).requires_grad_() for t in make_inputs(
            case,
            height=9,
            width=10,
            group=2,
            group_channels=8,
            offset_std=2.0,
            dtype=torch.float32)
    ]
    reference = [t.detach().double().requires_grad_() for t in inputs]
    args = core_args(case, 2, 8)
    out = dcnv3_core(*inputs, *args, backend='cuda')
    ref = dcnv3_core_pytorch(*reference, *args)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    tol = {
        torch.float64: 1e-10,
        torch.float32: 1e-4,
        torch.float16: 5e-3,
        torch.bfloat16: 3e-2
    }[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    for fast, exact in zip(inputs, reference):
        scale = exact.grad.abs().max()
        torch.testing.assert_close(
            fast.grad.double() / scale, exact.grad / scale, rtol=tol, atol=tol)


@needs_cuda_ext
@pytest.mark.parametrize('group_channels', [1, 2, 4, 8])
def test_cuda_narrow_lanes_one_group_one_image(group_channels):
    """Lane widths 1 to 8, one group, one 5x7 image: the last warp of the
    lane backward is part empty (its lanes add zeros to the shuffles)."""
    case = CASES['k3']
    inputs = [t.cuda().requires_grad_() for t in make_inputs(
        case, n=1, height=5, width=7, group=1, group_channels=group_channels,
        offset_std=2.0)]
    reference = [t.detach().requires_grad_() for t in inputs]
    args = core_args(case, 1, group_channels)
    out = dcnv3_core(*inputs, *args, backend='cuda')
    ref = dcnv3_core_pytorch(*reference, *args)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for fast, exact in zip(inputs, reference):
        torch.testing.assert_close(fast.grad, exact.grad, rtol=1e-10,
                                   atol=1e-10)


@needs_cuda_ext
@pytest.mark.parametrize('group_channels', [12, 16, 32])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('misaligned', [False, True])
def test_cuda_fast_kernels_match_the_baseline_kernels(group_channels, dtype,
                                                      misaligned):
    """The extension's vector forward and lane backward (where Cg and the
    alignment allow; a tensor 2 bytes past a 16-byte boundary takes the
    element forward) against its baseline kernels (``simple=True``)."""
    from m3i_mm.ops.dcnv3.dispatch import _load_ext
    ext = _load_ext()
    case = CASES['k3x5_mixed']
    input, offset, mask = (t.cuda().to(dtype) for t in make_inputs(
        case, height=9, width=10, group=2, group_channels=group_channels,
        offset_std=2.0, dtype=torch.float32))
    if misaligned:
        storage = torch.empty(input.numel() + 1, dtype=dtype, device='cuda')
        input = storage[1:].view_as(input).copy_(input)
        assert input.is_contiguous() and input.data_ptr() % 16 != 0
    grad = torch.randn(offset.shape[:3] + input.shape[3:], device='cuda',
                       dtype=dtype)
    args = core_args(case, 2, group_channels)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    fast, base = (ext.forward(input, offset, mask, *args, simple)
                  for simple in (False, True))
    torch.testing.assert_close(fast, base, rtol=tol, atol=tol)
    fast, base = (ext.backward(input, offset, mask, grad, *args, simple)
                  for simple in (False, True))
    for got, want in zip(fast, base):
        scale = want.float().abs().max()
        torch.testing.assert_close(got.float() / scale, want.float() / scale,
                                   rtol=tol, atol=tol)


def test_build_module_loads_without_the_package():
    """setup.py loads build.py by path, before m3i_mm's deps exist."""
    path = dcnv3_build.__file__
    code = ('import importlib.util, sys\n'
            f'spec = importlib.util.spec_from_file_location("b", {path!r})\n'
            'b = importlib.util.module_from_spec(spec)\n'
            'spec.loader.exec_module(b)\n'
            'assert "m3i_mm" not in sys.modules\n'
            'print(b.EXT_NAME, len(b.get_dcnv3_extensions()))\n')
    env = dict(os.environ, M3I_FORCE_CUDA='0')
    result = subprocess.run([sys.executable, '-c', code],
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    expected = 1 if torch.cuda.is_available() else 0
    assert result.stdout.split()[-2:] == ['m3i_mm._ext_dcnv3', str(expected)]


def test_extension_is_built_only_when_wanted(monkeypatch):
    monkeypatch.setenv(dcnv3_build.FORCE_ENV, '0')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert dcnv3_build.get_dcnv3_extensions() == []
    from torch.utils import cpp_extension
    home = _real_toolkit()
    if cpp_extension.CUDA_HOME is None or home is None:
        pytest.skip('no CUDA toolkit: CUDAExtension cannot be declared')
    monkeypatch.setenv(dcnv3_build.FORCE_ENV, '1')
    # torch read CUDA_HOME when this process imported it (its guess may
    # differ from the toolkit found): a build must not go on with another.
    monkeypatch.setenv('CUDA_HOME', home)
    monkeypatch.setattr(cpp_extension, 'CUDA_HOME', '/elsewhere')
    with pytest.raises(dcnv3_build.CudaToolkitNotFound,
                       match='already uses CUDA_HOME=/elsewhere'):
        dcnv3_build.get_dcnv3_extensions()
    monkeypatch.setattr(cpp_extension, 'CUDA_HOME', home)
    (ext, ) = dcnv3_build.get_dcnv3_extensions()
    assert ext.name == 'm3i_mm._ext_dcnv3'
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    assert sorted(ext.sources) == sorted(dcnv3_build.source_paths())
    for source in ext.sources:
        assert not osp.isabs(source) and osp.isfile(osp.join(root, source))


def _cuda_headers_present() -> bool:
    from torch.utils.cpp_extension import include_paths
    return any(
        osp.isfile(osp.join(path, 'ATen', 'cuda', 'Atomic.cuh'))
        for path in include_paths())


@pytest.mark.skipif(
    dcnv3_build.find_nvcc() is None,
    reason='nvcc not found: CUDA sources not compile-checked')
@pytest.mark.skipif(
    not _cuda_headers_present(), reason="torch's CUDA headers not installed")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    """Real nvcc compile (sm_80) of every extension source to an object.

    The sources compile in parallel: about a minute on 2 cores.
    """
    jobs = []
    for source in dcnv3_build.source_paths(relative=False):
        output = tmp_path / (osp.basename(source) + '.o')
        command = dcnv3_build.nvcc_compile_command(source, str(output))
        jobs.append((source, output,
                     subprocess.Popen(
                         command,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT,
                         text=True)))
    for source, output, job in jobs:
        log, _ = job.communicate(timeout=900)
        assert job.returncode == 0, f'nvcc failed on {source}:\n{log[-5000:]}'
        assert output.stat().st_size > 0


def _real_toolkit():
    try:
        return dcnv3_build.find_cuda_home()
    except dcnv3_build.CudaToolkitNotFound:
        return None


def _build_env(**extra):
    """This environment without CUDA_HOME / CUDA_PATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('CUDA_HOME', 'CUDA_PATH')}
    env.update(extra)
    return env


@pytest.mark.skipif(_real_toolkit() is None, reason='no CUDA toolkit here')
def test_extension_links_the_toolkit_behind_an_nvcc_wrapper(tmp_path):
    """With only a wrapper script ``nvcc`` on PATH, the extension's library
    folders hold libcudart (torch alone guesses the wrapper's parent
    folder and the link fails: ``cannot find -lcudart``)."""
    real = osp.join(_real_toolkit(), 'bin', 'nvcc')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'nvcc').write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    (bin_dir / 'nvcc').chmod(0o755)
    env = _build_env(M3I_FORCE_CUDA='1',
                     PATH=f'{bin_dir}:{os.environ["PATH"]}')
    script = ('from m3i_mm.ops.dcnv3 import build\n'
              'print(build.get_dcnv3_extensions()[0].library_dirs)')
    run = subprocess.run([sys.executable, '-c', script], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    dirs = eval(run.stdout.strip().splitlines()[-1])
    assert any(
        glob.glob(osp.join(d, 'libcudart.so*')) for d in dirs), dirs


def test_missing_toolkit_names_the_variable_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv('CUDA_HOME', str(tmp_path))
    with pytest.raises(dcnv3_build.CudaToolkitNotFound,
                       match=f'CUDA_HOME={tmp_path} has no bin/nvcc'):
        dcnv3_build.find_cuda_home()
    monkeypatch.delenv('CUDA_HOME')
    monkeypatch.delenv('CUDA_PATH', raising=False)
    (tmp_path / 'nvcc').write_text('#!/bin/sh\nexit 1\n')
    (tmp_path / 'nvcc').chmod(0o755)
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(dcnv3_build.CudaToolkitNotFound,
                       match='set CUDA_HOME to the toolkit folder'):
        dcnv3_build.find_cuda_home(fallbacks=())
