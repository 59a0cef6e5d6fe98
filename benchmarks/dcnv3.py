"""Benchmark the DCNv3 core: forward + backward time, printed as ratios.

Compares m3i_mm's pure-PyTorch DCNv3 core with a straightforward
grid_sample implementation written the way the official reference
(``dcnv3_core_pytorch`` of OpenGVLab/InternImage) is: pad the input, build
normalised sampling grids, fold the groups into the batch, one
``F.grid_sample`` over all points, then multiply by the mask and sum the
points. Shapes: the four stages of InternImage-T on a batch of two 224x224
images. Goal: ours >= 2x faster on CPU. Where a GPU is present it also
compares the CUDA extension (if built) with the PyTorch path on the GPU.

Usage::

    python benchmarks/dcnv3.py [--repeats 7] [--threads N]

The CPU is timed with one intra-op thread and with all of them (or only
with ``--threads N``); each number is the best of ``--repeats`` runs, the
implementations interleaved. Run it on an otherwise idle machine: with
another process busy, every multi-threaded op waits for a core and the
numbers mostly measure the scheduler.
"""
import argparse
import os.path as osp
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

# run from a checkout without installing m3i_mm
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from m3i_mm.ops.dcnv3.dispatch import (  # noqa: E402
    cuda_ext_available, dcnv3_core)
from m3i_mm.ops.dcnv3.functional import dcnv3_core_pytorch  # noqa: E402

# InternImage-T at 224x224: (height = width, channels, groups) per stage
STAGES = [(56, 64, 4), (28, 128, 8), (14, 256, 16), (7, 512, 32)]
BATCH = 2
KERNEL, PAD = 3, 1
POINTS = KERNEL * KERNEL


def grid_sample_dcnv3(input,
                      offset,
                      mask,
                      group,
                      group_channels,
                      offset_scale=1.0):
    """DCNv3 core the official reference way (k=3, stride 1, pad 1, dil 1).
    """
    n, height, width, channels = input.shape
    _, out_h, out_w, _ = offset.shape
    x = F.pad(input, [0, 0, PAD, PAD, PAD, PAD])
    padded_h, padded_w = height + 2 * PAD, width + 2 * PAD
    # reference points (pixel centres, normalised to [0, 1])
    ref_y, ref_x = torch.meshgrid(
        torch.arange(out_h, dtype=torch.float32) + 1.5,
        torch.arange(out_w, dtype=torch.float32) + 1.5,
        indexing='ij')
    ref = torch.stack((ref_x / padded_w, ref_y / padded_h), -1)
    ref = ref.view(1, out_h, out_w, 1, 2)
    # kernel grid, x-major
    k = torch.arange(KERNEL, dtype=torch.float32) - KERNEL // 2
    grid_x, grid_y = torch.meshgrid(k / padded_w, k / padded_h, indexing='ij')
    grid = torch.stack((grid_x, grid_y), -1).view(1, 1, 1, POINTS, 2)
    grid = grid.repeat(1, 1, 1, group, 1)
    norm = torch.tensor([padded_w, padded_h], dtype=torch.float32)
    locations = (ref + grid * offset_scale).repeat(n, 1, 1, 1, 1)
    locations = locations + offset.view(n, out_h, out_w, group * POINTS,
                                        2) * offset_scale / norm
    grids = 2 * locations - 1
    # groups into the batch: (N*G, Cg, H, W) and (N*G, Ho*Wo, P, 2)
    x = x.view(n, padded_h * padded_w,
               channels).transpose(1, 2).reshape(n * group, group_channels,
                                                 padded_h, padded_w)
    grids = grids.view(n, out_h * out_w, group, POINTS,
                       2).transpose(1, 2).flatten(0, 1)
    sampled = F.grid_sample(
        x, grids, mode='bilinear', padding_mode='zeros', align_corners=False)
    mask = mask.view(n, out_h * out_w, group,
                     POINTS).transpose(1, 2).reshape(n * group, 1,
                                                     out_h * out_w, POINTS)
    out = (sampled * mask).sum(-1).view(n, channels, out_h * out_w)
    return out.transpose(1, 2).reshape(n, out_h, out_w, channels)


def ours(input, offset, mask, group, group_channels):
    return dcnv3_core_pytorch(input, offset, mask, KERNEL, KERNEL, 1, 1, PAD,
                              PAD, 1, 1, group, group_channels, 1.0)


def ours_cuda(input, offset, mask, group, group_channels):
    return dcnv3_core(
        input,
        offset,
        mask,
        KERNEL,
        KERNEL,
        1,
        1,
        PAD,
        PAD,
        1,
        1,
        group,
        group_channels,
        1.0,
        backend='cuda')


def make_stage(height: int,
               channels: int,
               group: int,
               device: str,
               batch: int = BATCH) -> Tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(height)
    shape = (batch, height, height)
    input = torch.randn(*shape, channels, generator=gen)
    offset = torch.randn(*shape, group * POINTS * 2, generator=gen)
    mask = torch.rand(*shape, group * POINTS, generator=gen)
    mask = mask.view(*shape, group, POINTS).softmax(-1).view(*shape, -1)
    grad = torch.randn(*shape, channels, generator=gen)
    return tuple(t.to(device) for t in (input, offset, mask, grad))


def time_fwd_bwd(fn: Callable, data: Tuple[torch.Tensor, ...], group: int,
                 sync: Callable) -> float:
    input, offset, mask, grad = (t.clone() for t in data)
    for t in (input, offset, mask):
        t.requires_grad_()
    sync()
    start = time.perf_counter()
    fn(input, offset, mask, group, input.shape[-1] // group).backward(grad)
    sync()
    return time.perf_counter() - start


def compare(impls: List[Tuple[str, Callable]], device: str,
            repeats: int) -> List[float]:
    """Best fwd+bwd seconds per implementation, summed over the stages."""
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    totals = [0.0] * len(impls)
    print(f'{"stage (HxW, C, G)":<22}' + ''.join(f'{name + " ms":>16}'
                                                 for name, _ in impls))
    for height, channels, group in STAGES:
        data = make_stage(height, channels, group, device)
        # same function: check the outputs agree before timing
        outs = [fn(*data[:3], group, channels // group) for _, fn in impls]
        for (name, _), out in zip(impls[1:], outs[1:]):
            diff = (out.float() - outs[0].float()).abs().max().item()
            if diff > 1e-3:
                raise AssertionError(f'{name} differs from {impls[0][0]} by '
                                     f'{diff} at stage {height}')
        times = [[] for _ in impls]
        for _ in range(repeats + 1):  # the first round warms up
            for i, (_, fn) in enumerate(impls):
                times[i].append(time_fwd_bwd(fn, data, group, sync))
        best = [min(t[1:]) for t in times]
        for i, seconds in enumerate(best):
            totals[i] += seconds
        print(f'{f"{height}x{height}, {channels}, {group}":<22}' +
              ''.join(f'{1e3 * b:>16.1f}' for b in best))
    print(f'{"total":<22}' + ''.join(f'{1e3 * t:>16.1f}' for t in totals))
    return totals


def best_of(fn: Callable, sync: Callable, repeats: int) -> float:
    """Best seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def profiled_seconds(fn: Callable, device: str,
                     needle: str) -> Tuple[float, float]:
    """Self time of one call of ``fn``: in ops or kernels named with
    ``needle``, and in all of them.

    Profiles ``fn`` once: device time of the GPU kernels on ``'cuda'``, CPU
    time of the dispatched ops on ``'cpu'``.

    Returns:
        tuple[float, float]: Seconds named with ``needle``, seconds in all.
    """
    from torch.profiler import ProfilerActivity, profile
    cuda = device == 'cuda'
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    times = [(e.key, e.self_device_time_total if cuda else
              e.self_cpu_time_total) for e in prof.key_averages()]
    named = sum(t for key, t in times if needle in key)
    return named / 1e6, sum(t for _, t in times) / 1e6


def kernel_speedups(ext, device: str, batch: int, dtypes: Sequence[
        torch.dtype], repeats: int) -> Dict[torch.dtype, Tuple[float, float]]:
    """The extension's kernels against its baseline kernels, per stage.

    Times ``ext.forward`` and ``ext.backward`` (the op without autograd)
    with ``simple=True`` (the first kernels: one thread per output element,
    one per sampling point) and ``simple=False`` (the vector forward and
    lane backward), after checking that both give the same results.

    Args:
        ext: ``m3i_mm._ext_dcnv3``, or a module with its signatures (the
            tests' host emulation).
        device (str): Where the tensors live.
        batch (int): Images per stage tensor.
        dtypes (Sequence[torch.dtype]): Tensor dtypes to time.
        repeats (int): Timed calls per number (best of).

    Returns:
        dict: dtype -> (baseline seconds, fast seconds), forward + backward
        summed over the four stages.
    """
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    print(f'{"stage (HxW, C, G)":<20}{"dtype":>10}{"fwd base":>10}'
          f'{"fwd new":>9}{"x":>7}{"bwd base":>10}{"bwd new":>9}{"x":>7}  ms')
    totals = {}
    for dtype in dtypes:
        base_total = fast_total = 0.0
        kernel_totals = [0.0, 0.0]
        for height, channels, group in STAGES:
            input, offset, mask, grad = (t.to(dtype) for t in make_stage(
                height, channels, group, device, batch))
            args = (KERNEL, KERNEL, 1, 1, PAD, PAD, 1, 1, group,
                    channels // group, 1.0, False)
            row = []
            for name, call in (
                    ('forward', lambda simple: ext.forward(
                        input, offset, mask, *args, simple)),
                    ('backward', lambda simple: ext.backward(
                        input, offset, mask, grad, *args, simple))):
                base, fast = call(True), call(False)
                if name == 'forward':
                    base, fast = [base], [fast]
                for b, f in zip(base, fast):
                    diff = (b.float() - f.float()).abs().max().item()
                    scale = b.float().abs().max().item() or 1.0
                    if diff > 2e-2 * scale:
                        raise AssertionError(
                            f'{name} kernels differ by {diff} (of {scale}) at '
                            f'stage {height}, {dtype}')
                row += [best_of(lambda: call(True), sync, repeats),
                        best_of(lambda: call(False), sync, repeats)]
            base_total += row[0] + row[2]
            fast_total += row[1] + row[3]
            print(f'{f"{height}x{height}, {channels}, {group}":<20}'
                  f'{str(dtype).split(".")[1]:>10}'
                  f'{1e3 * row[0]:10.3f}{1e3 * row[1]:9.3f}'
                  f'{row[0] / row[1]:7.2f}{1e3 * row[2]:10.3f}'
                  f'{1e3 * row[3]:9.3f}{row[2] / row[3]:7.2f}')
            if device == 'cuda':  # kernels alone, without zeros and casts
                for i, simple in enumerate((True, False)):

                    def both(simple=simple):
                        ext.forward(input, offset, mask, *args, simple)
                        ext.backward(input, offset, mask, grad, *args, simple)

                    kernel_totals[i] += profiled_seconds(both, device,
                                                         'dcnv3')[0]
        totals[dtype] = (base_total, fast_total)
        print(f'{"total":<20}{str(dtype).split(".")[1]:>10}  forward + '
              f'backward: {1e3 * base_total:.3f} -> {1e3 * fast_total:.3f} '
              f'ms, {base_total / fast_total:.2f}x (goal >= 3x in bf16)')
        if device == 'cuda':
            print(f'{"":<30}the dcnv3 kernels alone (profiler): '
                  f'{1e3 * kernel_totals[0]:.3f} -> '
                  f'{1e3 * kernel_totals[1]:.3f} ms, '
                  f'{kernel_totals[0] / kernel_totals[1]:.2f}x')
    if torch.float32 in totals and torch.bfloat16 in totals:
        ratio = totals[torch.float32][1] / totals[torch.bfloat16][1]
        print(f'new kernels, bf16 over fp32: {ratio:.2f}x (goal > 1)')
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='intra-op threads (default: 1, then all)')
    args = parser.parse_args()
    threads = [args.threads] if args.threads else sorted(
        {1, torch.get_num_threads()})

    for num_threads in threads:
        torch.set_num_threads(num_threads)
        print(f'CPU, {num_threads} thread(s), batch {BATCH}, InternImage-T '
              f'stages at 224x224, forward + backward (best of '
              f'{args.repeats})')
        reference, pytorch = compare([('grid_sample', grid_sample_dcnv3),
                                      ('m3i_mm', ours)], 'cpu', args.repeats)
        ratio = reference / pytorch
        print(f'CPU speed-up of m3i_mm over the grid_sample reference, '
              f'{num_threads} thread(s): {ratio:.2f}x (goal >= 2x: '
              f'{"met" if ratio >= 2 else "NOT met"})\n')

    if torch.cuda.is_available():
        print(f'\nCUDA ({torch.cuda.get_device_name()})')
        impls = [('pytorch', ours)]
        if cuda_ext_available():
            impls.append(('cuda_ext', ours_cuda))
        else:
            print('m3i_mm._ext_dcnv3 is not built: PyTorch path only')
        totals = compare(impls, 'cuda', args.repeats)
        if len(totals) == 2:
            print(f'CUDA extension speed-up over the PyTorch path on the '
                  f'GPU: {totals[0] / totals[1]:.2f}x')


if __name__ == '__main__':
    main()
