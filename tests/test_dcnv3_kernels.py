"""The DCNv3 CUDA kernels' arithmetic, run on the CPU.

``tests/native/dcnv3_host_emulation.cpp`` compiles the kernels' per-thread
functions (``m3i_mm/ops/dcnv3/src/dcnv3_thread.cuh``) for the host and runs
them in the kernels' thread order: the vector forward (16-byte packs of
channels) and the one-element forward, the lane backward (a sample's
channels summed by the kernel's xor butterfly) and the point backward. The
GPU test ``test_dcnv3.py::test_cuda_matches_pytorch`` runs the kernels
themselves where a GPU is lent.
"""
import os.path as osp
import re

import pytest
import torch

from conftest import load_script
from test_dcnv3 import CASES, core_args, make_inputs
from m3i_mm.ops.dcnv3.functional import dcnv3_core_pytorch

HERE = osp.dirname(osp.abspath(__file__))
SRC = osp.join(osp.dirname(HERE), 'm3i_mm', 'ops', 'dcnv3', 'src')
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2
}


@pytest.fixture(scope='module')
def kernels(tmp_path_factory):
    """The host build of the kernels' thread functions (about 30 s)."""
    from torch.utils.cpp_extension import load
    return load(
        'dcnv3_host_emulation',
        [osp.join(HERE, 'native', 'dcnv3_host_emulation.cpp')],
        extra_include_paths=[SRC],
        extra_cflags=['-O2'],
        build_directory=str(tmp_path_factory.mktemp('dcnv3_host')))


def run_kernels(kernels, inputs, grad, case, group, group_channels, simple):
    """Output and (input, offset, mask) gradients of the emulated kernels:
    the baseline pair if ``simple``, else those the extension picks."""
    args = core_args(case, group, group_channels)
    out = kernels.forward(*inputs, *args, simple)
    grads = kernels.backward(*inputs, grad, *args, simple)
    return out, grads


def reference(inputs, case, group, group_channels):
    """fp64 output of the PyTorch core, a random output gradient (in the
    inputs' dtype) and the fp64 gradients it gives."""
    exact = [t.detach().double().requires_grad_() for t in inputs]
    out = dcnv3_core_pytorch(*exact, *core_args(case, group, group_channels))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grad = grad.to(inputs[0].dtype)
    out.backward(grad.double())
    return out.detach(), grad, [t.grad for t in exact]


def case_inputs(name, dtype, group_channels):
    return [
        t.to(dtype) for t in make_inputs(
            CASES[name], height=9, width=10, group=2,
            group_channels=group_channels, offset_std=2.0,
            dtype=torch.float32)
    ]


def assert_matches_reference(out, grads, ref, ref_grads, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    for got, want in zip(grads, ref_grads):
        scale = want.abs().max()
        torch.testing.assert_close(
            got.double() / scale, want / scale, rtol=tol, atol=tol)


@pytest.mark.parametrize('name', list(CASES))
@pytest.mark.parametrize(
    'dtype', [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('group_channels', [8, 16, 32])
def test_fast_kernels_match_pytorch(kernels, name, dtype, group_channels):
    """Vector forward and lane backward against the fp64 PyTorch core, in
    the GPU test's tolerances; InternImage's Cg are 16 and 32."""
    inputs = case_inputs(name, dtype, group_channels)
    ref, grad, ref_grads = reference(inputs, CASES[name], 2, group_channels)
    out, grads = run_kernels(kernels, inputs, grad, CASES[name], 2,
                             group_channels, simple=False)
    assert_matches_reference(out, grads, ref, ref_grads, dtype)


@pytest.mark.parametrize('name', list(CASES))
@pytest.mark.parametrize('group_channels', [3, 12, 48])
@pytest.mark.parametrize('simple', [False, True])
def test_kernels_at_group_channels_the_lanes_do_not_take(
        kernels, name, group_channels, simple):
    """Cg that are no power of two <= 32 run the point backward; the
    forward packs channels where Cg allows (fp32: 12 and 48)."""
    inputs = case_inputs(name, torch.float32, group_channels)
    ref, grad, ref_grads = reference(inputs, CASES[name], 2, group_channels)
    out, grads = run_kernels(kernels, inputs, grad, CASES[name], 2,
                             group_channels, simple=simple)
    assert_matches_reference(out, grads, ref, ref_grads, torch.float32)


@pytest.mark.parametrize('group_channels', [1, 2, 4, 8])
@pytest.mark.parametrize('simple', [False, True])
def test_narrow_lanes_one_group_one_image(kernels, group_channels, simple):
    """Lane widths 1 to 8 with one group and one 5x7 image: 35 samples, so
    the last warp of a lane backward is part empty on a GPU."""
    case = CASES['k3']
    inputs = make_inputs(case, n=1, height=5, width=7, group=1,
                         group_channels=group_channels, offset_std=2.0,
                         dtype=torch.float64)
    ref, grad, ref_grads = reference(inputs, case, 1, group_channels)
    out, grads = run_kernels(kernels, inputs, grad, case, 1, group_channels,
                             simple=simple)
    assert_matches_reference(out, grads, ref, ref_grads, torch.float64)


def test_misaligned_input_takes_the_element_forward(kernels):
    """An input 2 bytes past a 16-byte boundary cannot be read in 16-byte
    packs: the forward falls back to one element per thread."""
    name, group_channels = 'k3', 16
    inputs = case_inputs(name, torch.bfloat16, group_channels)
    storage = torch.empty(inputs[0].numel() + 1, dtype=torch.bfloat16)
    misaligned = storage[1:].view_as(inputs[0]).copy_(inputs[0])
    assert misaligned.data_ptr() % 16 != 0
    ref, grad, ref_grads = reference(inputs, CASES[name], 2, group_channels)
    out, grads = run_kernels(kernels, [misaligned, *inputs[1:]], grad,
                             CASES[name], 2, group_channels, simple=False)
    assert_matches_reference(out, grads, ref, ref_grads, torch.bfloat16)


def test_kernels_refuse_shapes_they_would_index_past(kernels):
    """The extension's own shape checks (shared with the emulation): the
    Python wrapper checks first, but the benchmark calls the kernels."""
    case = CASES['k3']
    input, offset, mask = make_inputs(case, group_channels=3)
    args = core_args(case, 2, 3)
    with pytest.raises(RuntimeError,
                       match='input has 6 channels, group \\* group_channels'
                       ' = 8'):
        kernels.forward(input, offset, mask, *core_args(case, 2, 4), False)
    with pytest.raises(RuntimeError, match='mask has shape'):
        kernels.forward(input, offset, mask[..., 1:], *args, False)
    with pytest.raises(RuntimeError, match='offset has shape'):
        kernels.forward(input, offset[:, 1:], mask, *args, False)
    with pytest.raises(RuntimeError, match='grad_output has shape'):
        kernels.backward(input, offset, mask, input[..., :1], *args, False)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_fast_kernels_equal_the_baseline_kernels(kernels, dtype):
    """Same sums in the same order: the vector forward is bit-equal to the
    element forward, and the lane backward's input gradient to the point
    backward's (one thread after another, the scatters come in the same
    order); only the butterfly reorders the offset and mask sums."""
    name, group_channels = 'k3x5_mixed', 16
    inputs = case_inputs(name, dtype, group_channels)
    _, grad, _ = reference(inputs, CASES[name], 2, group_channels)
    fast, fast_grads = run_kernels(kernels, inputs, grad, CASES[name], 2,
                                   group_channels, simple=False)
    base, base_grads = run_kernels(kernels, inputs, grad, CASES[name], 2,
                                   group_channels, simple=True)
    torch.testing.assert_close(fast, base, rtol=0, atol=0)
    torch.testing.assert_close(fast_grads[0], base_grads[0], rtol=0, atol=0)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for got, want in zip(fast_grads[1:], base_grads[1:]):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        assert got.abs().sum() > 0


def test_kernel_benchmark_runs_on_the_emulation(kernels, capsys):
    """benchmarks/dcnv3.py's kernel table (the GPU report's section 4)
    through the host emulation, which has the extension's signatures."""
    bench = load_script('benchmarks', 'dcnv3.py')
    totals = bench.kernel_speedups(kernels, 'cpu', 1,
                                   (torch.float32, torch.bfloat16), 1)
    out = capsys.readouterr().out
    assert set(totals) == {torch.float32, torch.bfloat16}
    assert all(base > 0 and fast > 0 for base, fast in totals.values())
    rows = re.findall(r'^\d+x\d+, \d+, \d+ +(float32|bfloat16)'
                      r'( +[\d.]+){6}$', out, re.M)
    assert len(rows) == 8, out
    assert re.search(r'bf16 over fp32: [\d.]+x', out), out
