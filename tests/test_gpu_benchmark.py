"""benchmarks/gpu.py (issue 19) runs unchanged on a CPU with ``--quick``
and prints every section with numbers that hang together."""
import os
import re
import subprocess
import sys

from conftest import REPO


def test_gpu_benchmark_quick_prints_every_section():
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, 'benchmarks', 'gpu.py'),
         '--quick', '--compile-backend', 'eager', '--skip', 'exit'],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES=''))
    out = run.stdout
    assert run.returncode == 0, run.stderr[-3000:]
    peak = float(re.search(r'matmul peak \(measured\): ([\d.]+)', out)[1])
    assert peak > 0
    rows = dict(re.findall(
        r'^  (M3I eager|M3I compiled|backbone only|MAE \(mmpretrain\))'
        r'\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+[\d.]+$', out, re.M))
    assert len(rows) == 4 and all(float(ms) > 0 for ms in rows.values()), out
    overheads = re.findall(r'FLOP-normalised overhead, M3I \w+: ([\d.]+)',
                           out)
    assert len(overheads) == 2 and all(float(o) > 0 for o in overheads), out
    assert re.search(r'graph breaks in M3I.loss: 0 ', out), out
    assert re.search(r'^  float32\s+[\d.]+\s+[\d.]+$', out, re.M), out
    assert re.search(r'^  bfloat16\s+[\d.]+\s+[\d.]+$', out, re.M), out
    stages = re.findall(r'^\d+x\d+, \d+, \d+\s+[\d.]+$', out, re.M)
    assert len(stages) == 4, out
    assert re.search(r'batched view augmentation: [\d.]+ ms per image', out)
    assert 'trainer exit' not in out  # --skip exit


def test_op_share_sums_the_named_ops_self_time():
    """The profile behind 'DCNv3 kernels: N % of the bf16 step': on the CPU
    the custom op of the PyTorch DCNv3 backward is part of a step."""
    import torch
    from conftest import load_script
    from m3i_mm.ops.dcnv3.functional import dcnv3_core_pytorch
    gpu = load_script('benchmarks', 'gpu.py')
    input = torch.randn(2, 16, 16, 32, requires_grad=True)
    offset = torch.randn(2, 16, 16, 4 * 9 * 2, requires_grad=True)
    mask = torch.rand(2, 16, 16, 4 * 9, requires_grad=True)
    weight = torch.randn(512, 512)

    def step():
        out = dcnv3_core_pytorch(input, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1,
                                 4, 8, 1.0)
        out.sum().backward()
        weight @ weight

    share = gpu.op_share(step, 'cpu', 'm3i_mm::dcnv3_corner_dots')
    assert 0 < share < 1
    assert gpu.op_share(step, 'cpu', 'no_such_op') == 0
    assert abs(gpu.op_share(step, 'cpu', '') - 1) < 1e-9
