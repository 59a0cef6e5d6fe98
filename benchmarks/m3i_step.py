"""How much does M3I cost on top of its backbone, and against MAE?

Prints, measured in one run on one device:

- overhead ratio = M3I training step / (a training step of the backbone
  alone on the mixed input: forward, backward and its optimiser step,
  + the momentum target encoder's forward). Goal: <= 1.15. Both steps
  update their parameters with AdamW; the M3I step also updates its
  momentum encoder (EMA), which the backbone step has no need of.
- M3I step / mmpretrain MAE step on the same backbone.
- share of the step spent on the dynamic loss weight λ: the balancer's
  per-step update timed inside the step (goal <= 3%), and the step time
  with / without λ (the gradient taps included).
- FLOPs of the M3I step and of the backbone-only step
  (``torch.utils.flop_counter``: matmuls, convolutions, attention; forward
  and backward) and the FLOP-normalised overhead
  (M3I time / backbone time) / (M3I FLOPs / backbone FLOPs), goal <= 1.05:
  how much slower than its backbone M3I runs per FLOP.
- "M3I w/o mix" (single masked input, 50% mask) step with the masked
  tokens dropped from the encoder / with them zero-filled and encoded.

Steps are timed in turns (interleaved) and medians reported, so that load
from other processes affects every variant alike.

Usage:
    python benchmarks/m3i_step.py [--arch deit-small] [--batch 8] [--img 224]
        [--steps 5] [--device cpu|cuda] [--threads N] [--wo-mix-only]
"""
import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import m3i_mm  # noqa: F401
from mmengine.logging import MessageHub
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from m3i_mm.models.utils.sample_fields import (num_masked,
                                              prepare_training_samples)

# mmpretrain ViT arch names -> (embed dims, heads).
ARCH_DIMS = {'deit-tiny': (192, 3), 'deit-small': (384, 6),
             'base': (768, 12), 'large': (1024, 16)}


def m3i_cfg(arch: str, img: int, balancer: bool, **mixer) -> dict:
    dims, heads = ARCH_DIMS[arch]
    return dict(
        type='M3I',
        backbone=dict(type='VisionTransformer', arch=arch, img_size=img,
                      patch_size=16, out_type='featmap'),
        mixer=dict(type='MultiInputMixer', patch_size=16, **mixer),
        image_target=dict(type='MomentumImageTarget'),
        image_decoder=dict(type='ImageTargetDecoder', in_channels=dims,
                           out_channels=dims, embed_dims=dims, depth=4,
                           num_heads=heads),
        category_head=dict(type='AttentionPoolingHead', in_channels=dims,
                           out_channels=dims, num_heads=heads),
        category_embedding=dict(type='CategoryEmbedding', num_classes=1000,
                                embed_dims=dims),
        loss_balancer=dict(type='GradientNormBalancer') if balancer else None)


def mae_cfg(arch: str, img: int) -> dict:
    dims, _ = ARCH_DIMS[arch]
    return dict(
        type='MAE',
        backbone=dict(type='MAEViT', arch=arch, img_size=img, patch_size=16,
                      mask_ratio=0.75),
        neck=dict(type='MAEPretrainDecoder', num_patches=(img // 16)**2,
                  patch_size=16, in_chans=3, embed_dim=dims,
                  decoder_embed_dim=512, decoder_depth=8,
                  decoder_num_heads=16, mlp_ratio=4.),
        head=dict(type='MAEPretrainHead', norm_pix=True, patch_size=16,
                  loss=dict(type='PixelReconstructionLoss', criterion='L2')))


def m3i_batch(n: int, img: int, device: str):
    grid = img // 16
    views = [torch.randn(n, 3, img, img, device=device) for _ in range(2)]
    samples = []
    for i in range(n):
        mask = torch.zeros(grid * grid, dtype=torch.bool)
        mask[torch.randperm(grid * grid)[:grid * grid // 2]] = True
        sample = DataSample().set_gt_label(i)
        sample.set_field(mask.view(grid, grid), 'mask')
        sample.set_field(torch.tensor([[0., 0., 224., 224.],
                                       [20., 10., 200., 180.]]), 'view_boxes')
        sample.set_field(torch.tensor([False, True]), 'view_flips')
        samples.append(sample.to(device))
    # As M3IDataPreprocessor leaves them (no host read in the step).
    prepare_training_samples(samples, torch.device(device),
                             num_masked(samples))
    return views, samples


def adamw(params) -> torch.optim.AdamW:
    """AdamW over the trainable ``params`` (torch's default implementation
    for the device: multi-tensor on CUDA, per tensor on CPU)."""
    return torch.optim.AdamW([p for p in params if p.requires_grad],
                             lr=1e-4)


def interleaved_medians(fns: dict, steps: int, device: str) -> dict:
    """Median seconds of each function, run in turns so that load from
    other processes affects all of them alike (one warm-up round first)."""
    times = {name: [] for name in fns}
    for round_idx in range(steps + 1):
        for name, fn in fns.items():
            if device == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == 'cuda':
                torch.cuda.synchronize()
            if round_idx:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_step(model, optimizer, *loss_args):
    """One optimisation step of ``model.loss``."""

    def step():
        losses = model.loss(*loss_args)
        total = sum(v for k, v in losses.items() if k.startswith('loss'))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--arch', default='deit-small', choices=list(ARCH_DIMS))
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--img', type=int, default=224)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument(
        '--wo-mix-only', action='store_true',
        help='time only the w/o-mix step, dropped vs zero-filled tokens')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    MessageHub.get_current_instance().update_info('max_iters', 10**6)
    dev = args.device

    def build(cfg):
        model = MODELS.build(cfg).to(dev).train()
        return model, adamw(model.parameters())

    views, samples = m3i_batch(args.batch, args.img, dev)
    wo_mix = dict(mode='mask', target_views=('different', 'different'))
    filled, filled_opt = build(
        m3i_cfg(args.arch, args.img, balancer=True, **wo_mix))
    dropped, dropped_opt = build(
        m3i_cfg(args.arch, args.img, balancer=True, drop_masked=True,
                **wo_mix))
    wo_mix_steps = dict(
        filled=train_step(filled, filled_opt, views, samples),
        dropped=train_step(dropped, dropped_opt, views, samples))
    if args.wo_mix_only:
        t = interleaved_medians(wo_mix_steps, args.steps, dev)
        print(f'device={dev} arch={args.arch}/16 batch={args.batch} '
              f'img={args.img} steps={args.steps} (median seconds)')
        print_wo_mix(t)
        return
    m3i, m3i_opt = build(m3i_cfg(args.arch, args.img, balancer=True))
    fixed, fixed_opt = build(m3i_cfg(args.arch, args.img, balancer=False))
    mae, mae_opt = build(mae_cfg(args.arch, args.img))
    mask = torch.stack([s.mask for s in samples]).to(dev)

    # Time spent in λ's per-step update, measured inside the M3I step.
    lambda_time = []
    balancer_step = m3i.loss_balancer.step

    def timed_balancer_step():
        start = time.perf_counter()
        out = balancer_step()
        lambda_time.append(time.perf_counter() - start)
        return out

    m3i.loss_balancer.step = timed_balancer_step

    backbone_opt = adamw(m3i.backbone.parameters())

    def backbone_only(optimiser_step: bool = True):
        """A training step of the backbone alone on the mixed input
        (fwd + bwd + its optimiser step) + the target encoder's fwd."""
        mixed = m3i.mixer(views, mask)
        feat = m3i.backbone(mixed.images)[-1]
        backbone_opt.zero_grad(set_to_none=True)
        feat.float().pow(2).mean().backward()
        if optimiser_step:
            backbone_opt.step()
        m3i.image_target(views[0])

    mae_samples = [DataSample() for _ in range(args.batch)]

    steps = dict(
        m3i=train_step(m3i, m3i_opt, views, samples),
        base=backbone_only,
        base_no_opt=lambda: backbone_only(optimiser_step=False),
        fixed=train_step(fixed, fixed_opt, views, samples),
        mae=train_step(mae, mae_opt, views[0], mae_samples),
        **wo_mix_steps)
    flops = {name: count_flops(steps[name]) for name in ('m3i', 'base')}
    t = interleaved_medians(steps, args.steps, dev)
    t_m3i, t_base, t_fixed, t_mae = t['m3i'], t['base'], t['fixed'], t['mae']
    t_lambda = statistics.median(lambda_time[1:])

    print(f'device={dev} arch={args.arch}/16 batch={args.batch} '
          f'img={args.img} steps={args.steps} (median seconds)')
    for label, value in (('M3I step', t_m3i),
                         ('backbone step + target fwd', t_base),
                         ('M3I step with fixed lambda', t_fixed),
                         ('MAE step (mmpretrain)', t_mae)):
        print(f'  {label:33s}{value:9.4f} s')
    print(f'overhead ratio (time; goal <= 1.15): {t_m3i / t_base:7.3f}')
    print(f'M3I / MAE step ratio:               {t_m3i / t_mae:8.3f}')
    print(f'lambda update share (goal <= 3%):   {100 * t_lambda / t_m3i:8.3f} %')
    print(f'step with / without lambda:         {t_m3i / t_fixed:8.3f}')
    flop_ratio = flops['m3i'] / flops['base']
    print(f'GFLOPs M3I step / backbone step:    {flops["m3i"] / 1e9:8.2f} / '
          f'{flops["base"] / 1e9:.2f} (ratio {flop_ratio:.3f})')
    print(f'GFLOP/s M3I / backbone:             '
          f'{flops["m3i"] / t_m3i / 1e9:8.1f} / '
          f'{flops["base"] / t_base / 1e9:.1f}')
    print('FLOP-normalised overhead (<= 1.05): '
          f'{t_m3i / t_base / flop_ratio:8.3f}')
    print('  ... against the backbone without its optimiser step: '
          f'{t_m3i / t["base_no_opt"] / flop_ratio:.3f}')
    print_wo_mix(t)


def print_wo_mix(t: dict) -> None:
    print(f'w/o mix step, masked tokens dropped / zero-filled: '
          f'{t["dropped"] / t["filled"]:6.3f} '
          f'({t["dropped"]:.4f} s / {t["filled"]:.4f} s)')


if __name__ == '__main__':
    main()
