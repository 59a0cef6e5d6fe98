"""The GPU report of issue 19, in one run on the GPU at hand.

Prints, each measured in this run on this device:

1. the dense matmul peak (bf16, 8192^3; what MFU is relative to);
2. M3I ViT-B/16 training step (eager and ``torch.compile``), its backbone-only
   step (benchmarks/m3i_step.py's definition) and mmpretrain's MAE, under
   bf16 autocast: ms, img/s, TFLOP/s (``torch.utils.flop_counter``), MFU
   and the FLOP-normalised overhead (M3I time / backbone time) /
   (M3I FLOPs / backbone FLOPs). Goals: MFU >= 40 %, overhead <= 1.10;
3. InternImage-T forward + backward per dtype (fp32, bf16 and fp16 autocast)
   with the CUDA DCNv3 kernels and with the PyTorch path (goal: >= 1,200
   img/s at batch 64 in bf16);
4. the DCNv3 op alone, forward + backward, per InternImage-T stage shape:
   the CUDA extension against the PyTorch path (fp32), and the extension's
   kernels against its baseline kernels per dtype (goals: >= 3x in bf16,
   bf16 faster than fp32);
5. the batched view augmentation (``M3IDataPreprocessor``), ms per image;
6. the trainer's exit: seconds from the last checkpoint of a
   ``tools/train.py`` run (16 persistent workers, ``pin_memory=True``) to
   the end of the process (goal <= 10 s).

Sized to finish in under 4 minutes on one H100/H200. ``--quick`` shrinks
every section (ViT-tiny, batch 2, 2 steps) so that the whole script runs on
a CPU in about a minute: tests/test_gpu_benchmark.py runs it that way.

Usage::

    python benchmarks/gpu.py [--quick] [--batch 128] [--steps 10]
        [--compile-backend inductor] [--skip exit]
"""
import argparse
import importlib
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Callable, Dict

import torch

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # a checkout without installing; sibling scripts
import dcnv3 as dcnv3_bench  # noqa: E402
import m3i_step  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import MessageHub  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402
from pipeline import batched_ms_per_image  # noqa: E402

from m3i_mm.ops.dcnv3.build import EXT_NAME  # noqa: E402
from m3i_mm.ops.dcnv3.dispatch import cuda_ext_available  # noqa: E402

SECTIONS = ('matmul', 'm3i', 'internimage', 'dcnv3', 'augment', 'exit')


def sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def best_seconds(fn: Callable, device: str, steps: int) -> float:
    """Best of ``steps`` timed calls after one warm-up call."""
    fn()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def autocast(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def op_share(fn: Callable, device: str, needle: str) -> float:
    """Share of one call's time in ops or kernels named with ``needle``
    (``benchmarks/dcnv3.py``'s ``profiled_seconds``).

    Returns:
        float: In [0, 1]; 0 if nothing was timed.
    """
    named, total = dcnv3_bench.profiled_seconds(fn, device, needle)
    return named / total if total else 0.0


def matmul_peak(device: str, n: int, steps: int) -> float:
    """Measured dense bf16 matmul TFLOP/s on ``n x n`` matrices."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16)
            for _ in range(2))
    seconds = best_seconds(lambda: a @ b, device, steps)
    return 2 * n**3 / seconds / 1e12


def m3i_report(args, device: str, peak: float) -> None:
    """Section 2: M3I step (eager, compiled) vs backbone-only vs MAE."""
    MessageHub.get_current_instance().update_info('max_iters', 10**6)
    torch.manual_seed(0)
    views, samples = m3i_step.m3i_batch(args.batch, args.img, device)
    mask = torch.stack([s.mask for s in samples]).to(device)
    m3i = MODELS.build(m3i_step.m3i_cfg(args.arch, args.img, True)).to(
        device).train()
    mae = MODELS.build(m3i_step.mae_cfg(args.arch, args.img)).to(
        device).train()
    m3i_opt, mae_opt = (m3i_step.adamw(m.parameters()) for m in (m3i, mae))
    backbone_opt = m3i_step.adamw(m3i.backbone.parameters())
    # What mmengine's ``compile=True`` compiles in a train step: the loss.
    compiled = SimpleNamespace(
        loss=torch.compile(m3i.loss, backend=args.compile_backend))

    def backbone_only():
        feat = m3i.backbone(m3i.mixer(views, mask).images)[-1]
        backbone_opt.zero_grad(set_to_none=True)
        feat.float().pow(2).mean().backward()
        backbone_opt.step()
        m3i.image_target(views[0])

    mae_samples = [DataSample() for _ in range(args.batch)]
    steps = {
        'M3I eager': m3i_step.train_step(m3i, m3i_opt, views, samples),
        'M3I compiled': m3i_step.train_step(compiled, m3i_opt, views,
                                            samples),
        'backbone only': backbone_only,
        'MAE (mmpretrain)': m3i_step.train_step(mae, mae_opt, views[0],
                                                mae_samples),
    }
    with autocast(device, torch.bfloat16):
        flops = {name: m3i_step.count_flops(fn) for name, fn in steps.items()
                 if name != 'M3I compiled'}
        flops['M3I compiled'] = flops['M3I eager']
        seconds = {name: best_seconds(fn, device, args.steps)
                   for name, fn in steps.items()}
    print(f'M3I {args.arch}/16, batch {args.batch}, {args.img} px, bf16 '
          f'autocast, AdamW (best of {args.steps} steps; compile backend '
          f'{args.compile_backend})')
    print(f'  {"step":<18}{"ms":>9}{"img/s":>9}{"TFLOP/s":>9}{"MFU %":>8}')
    for name, t in seconds.items():
        tflops = flops[name] / t / 1e12
        print(f'  {name:<18}{1e3 * t:9.1f}{args.batch / t:9.1f}'
              f'{tflops:9.3f}{100 * tflops / peak:8.2f}')
    base_flops = flops['backbone only']
    for name in ('M3I eager', 'M3I compiled'):
        overhead = (seconds[name] / seconds['backbone only']) / (
            flops[name] / base_flops)
        print(f'  FLOP-normalised overhead, {name}: {overhead:.3f} '
              '(goal <= 1.10)')
    torch._dynamo.reset()
    with autocast(device, torch.bfloat16):
        explained = torch._dynamo.explain(m3i.loss)(views, samples)
    print(f'  graph breaks in M3I.loss: {explained.graph_break_count} '
          '(goal 0)')


def internimage_report(args, device: str) -> None:
    """Section 3: InternImage-T fwd + bwd per dtype and DCNv3 backend."""
    backends = ['pytorch']
    if device == 'cuda' and cuda_ext_available():
        backends.insert(0, 'cuda')
    dtypes = [torch.float32, torch.bfloat16] + (
        [torch.float16] if device == 'cuda' else [])
    print(f'InternImage-T forward + backward, batch {args.ii_batch}, '
          f'{args.img} px (best of {args.steps})')
    print(f'  {"dtype":<10}' + ''.join(f'{b + " ms":>13}{"img/s":>8}'
                                      for b in backends))
    images = torch.randn(args.ii_batch, 3, args.img, args.img, device=device)
    models = {
        b: MODELS.build(dict(type='InternImage', arch='t',
                             out_indices=(4, ), dcn_backend=b)).to(device)
        for b in backends
    }
    for dtype in dtypes:
        row = f'  {str(dtype).split(".")[1]:<10}'
        for backend in backends:
            model = models[backend]

            def step():
                model.zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    out = model(images)[-1]
                out.float().mean().backward()

            t = best_seconds(step, device, args.steps)
            row += f'{1e3 * t:13.1f}{args.ii_batch / t:8.1f}'
        print(row)
    if 'cuda' in backends:
        model = models['cuda']

        def bf16_step():
            model.zero_grad(set_to_none=True)
            with autocast(device, torch.bfloat16):
                out = model(images)[-1]
            out.float().mean().backward()

        share = op_share(bf16_step, device, 'dcnv3')
        print(f'  DCNv3 kernels: {100 * share:.1f} % of the bf16 step\'s GPU '
              'time (profiler)')


def dcnv3_report(args, device: str) -> None:
    """Section 4: the DCNv3 op alone per stage shape."""
    impls = [('pytorch', dcnv3_bench.ours)]
    if device == 'cuda' and cuda_ext_available():
        impls.append(('cuda_ext', dcnv3_bench.ours_cuda))
    print(f'DCNv3 op forward + backward per InternImage-T stage, batch '
          f'{dcnv3_bench.BATCH} (fp32, best of {args.steps})')
    dcnv3_bench.compare(impls, device, args.steps)
    if len(impls) == 1:
        print('DCNv3 kernels against their baseline: not run (needs a GPU '
              'and m3i_mm._ext_dcnv3)')
        return
    print(f'DCNv3 kernels (the op without autograd) against the baseline '
          f'kernels, batch {args.ii_batch} (best of {args.steps})')
    dcnv3_bench.kernel_speedups(importlib.import_module(EXT_NAME), device, args.ii_batch,
                                (torch.float32, torch.bfloat16), args.steps)


def augment_report(args, device: str) -> None:
    """Section 5: batched view augmentation, ms per image."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'datasets',
                                   'imagenet_m3i.py'))
    ms = batched_ms_per_image(cfg, args.batch, device, args.steps)
    print(f'batched view augmentation: {ms:.4f} ms per image '
          f'(batch {args.batch})')


def exit_report(args, device: str) -> None:
    """Section 6: seconds from the last checkpoint to the trainer's end."""
    from m3i_mm.datasets import materialize_demo_digits
    with tempfile.TemporaryDirectory() as tmp:
        data = materialize_demo_digits(osp.join(tmp, 'data'))
        work = osp.join(tmp, 'work')
        command = [
            sys.executable, osp.join(ROOT, 'tools', 'train.py'),
            osp.join(ROOT, 'configs', 'pretrain', 'm3i_vit-tiny_demo.py'),
            '--work-dir', work, '--cfg-options',
            f'train_dataloader.dataset.data_root={data}',
            'train_dataloader.num_workers=16',
            'train_dataloader.persistent_workers=True',
            'train_dataloader.pin_memory=True',
            'train_dataloader.batch_size=8', 'train_cfg.max_iters=4',
            'default_hooks.checkpoint.interval=4'
        ]
        env = dict(os.environ, PYTHONPATH=ROOT)
        run = subprocess.run(command, cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        ended = time.time()
        last = osp.join(work, 'iter_4.pth')
        if run.returncode != 0 or not osp.exists(last):
            raise RuntimeError(f'tools/train.py failed ({run.returncode}):\n'
                               + run.stderr[-3000:])
        print(f'trainer exit: {ended - osp.getmtime(last):.1f} s after its '
              'last checkpoint (16 persistent workers, pin_memory; goal '
              '<= 10 s)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='tiny sizes: a CPU check of the script')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--ii-batch', type=int, default=64)
    parser.add_argument('--img', type=int, default=224)
    parser.add_argument('--arch', default='base',
                        choices=list(m3i_step.ARCH_DIMS))
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--compile-backend', default='inductor')
    parser.add_argument('--skip', nargs='*', default=[], choices=SECTIONS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.ii_batch, args.img = 2, 1, 64
        args.arch, args.steps = 'deit-tiny', 1
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    name = (torch.cuda.get_device_name() if device == 'cuda' else 'CPU')
    driver = ''
    if device == 'cuda':
        driver = subprocess.run(
            ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,'
             'noheader'], capture_output=True, text=True).stdout.strip()
    print(f'device: {name} {driver}; torch {torch.__version__}; CUDA '
          f'{torch.version.cuda}; DCNv3 kernels built: '
          f'{cuda_ext_available()}')
    peak = matmul_peak(device, 512 if args.quick else 8192, args.steps)
    print(f'bf16 matmul peak (measured): {peak:.2f} TFLOP/s')
    reports: Dict[str, Callable] = {
        'm3i': lambda: m3i_report(args, device, peak),
        'internimage': lambda: internimage_report(args, device),
        'dcnv3': lambda: dcnv3_report(args, device),
        'augment': lambda: augment_report(args, device),
        'exit': lambda: exit_report(args, device),
    }
    for section, report in reports.items():
        if section not in args.skip:
            report()


if __name__ == '__main__':
    main()
