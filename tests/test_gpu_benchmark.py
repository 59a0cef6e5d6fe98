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
