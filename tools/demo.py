"""The README's main job: M3I pre-training on the demo digits, then probes.

1. Pre-train a tiny ViT with M3I (``configs/pretrain/m3i_vit-tiny_demo.py``)
   on the 1,438 training digits (labels used as the category target).
2. Probe the frozen pre-trained backbone and, for comparison, the same
   backbone at random initialisation, on the mean of the patch tokens
   (:mod:`m3i_mm.evaluation.probe`): a standardised logistic regression
   trained to convergence (C by 5-fold CV on the training digits) and
   DINO's weighted 20-NN, no training.
3. Print both backbones' top-1 on the 359 validation digits, with the
   features' per-dimension std and effective rank.
4. Draw the pre-training curves (losses, λ, ḡ's, the monitors' held-out
   top-1) with ``tools/plot_run.py`` and print the PNG's path.

Usage:
    python tools/demo.py [--work-dir work_dirs/demo] [--data-root DIR]
        [--pretrain-iters N] [--seed S]
"""
import argparse
import os.path as osp
import time

import torch

import m3i_mm  # noqa: F401
from mmengine.config import Config
from mmengine.registry import RUNNERS

from m3i_mm.evaluation.probe import (build_backbone, evaluate_backbone,
                                     load_demo_split)
from m3i_mm.utils import shorten_iter_schedule

import plot_run  # noqa: E402  (tools/, next to this script)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN_CFG = osp.join(REPO, 'configs', 'pretrain', 'm3i_vit-tiny_demo.py')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/demo_digits')
    parser.add_argument('--pretrain-iters', type=int, default=None)
    parser.add_argument('--seed', type=int, default=0,
                        help='torch seed of the random-init backbone')
    return parser.parse_args()


def _set_data_root(cfg: Config, data_root: str) -> None:
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader',
                 'monitor_dataloader'):
        if cfg.get(name):
            cfg[name].dataset.data_root = data_root


def pretrain(args) -> str:
    cfg = Config.fromfile(PRETRAIN_CFG)
    cfg.work_dir = osp.join(args.work_dir, 'pretrain')
    _set_data_root(cfg, args.data_root)
    if args.pretrain_iters:
        shorten_iter_schedule(cfg, args.pretrain_iters)
        # A short run still logs (the curves of tools/plot_run.py).
        cfg.default_hooks.logger.interval = min(
            cfg.default_hooks.logger.interval, args.pretrain_iters)
    runner = RUNNERS.build(cfg)  # the config's runner_type: M3IRunner
    runner.train()
    return osp.join(cfg.work_dir, f'iter_{cfg.train_cfg.max_iters}.pth')


def main() -> None:
    args = parse_args()
    start = time.time()
    checkpoint = pretrain(args)
    minutes_pretrain = (time.time() - start) / 60
    backbone_cfg = Config.fromfile(PRETRAIN_CFG).model.backbone.to_dict()
    train = load_demo_split(args.data_root, 'train')
    val = load_demo_split(args.data_root, 'val')
    results = {'M3I pre-trained backbone':
               evaluate_backbone(build_backbone(backbone_cfg, checkpoint),
                                 train, val)}
    torch.manual_seed(args.seed)
    results['random-init backbone'] = evaluate_backbone(
        build_backbone(backbone_cfg), train, val)
    minutes = (time.time() - start) / 60
    print('\n' + '=' * 72)
    print('M3I demo: tiny ViT (4 layers, 64 wide) on the demo digits, CPU')
    print(f'pre-training checkpoint: {checkpoint} '
          f'({minutes_pretrain:.1f} min)')
    print('frozen features (mean of the patch tokens), top-1 on the 359 '
          'validation digits:')
    print(f'  {"":26s} {"linear":>7s} {"k-NN":>7s} {"C":>6s} '
          f'{"feat std":>8s} {"eff rank":>8s}')
    for name, r in results.items():
        print(f'  {name:26s} {r["linear"]:6.2f}% {r["knn"]:6.2f}% '
              f'{r["C"]:6g} {r["std"]:8.3f} {r["erank"]:8.2f}')
    print('  linear: standardised logistic regression to convergence '
          '(C by 5-fold CV);')
    print('  k-NN: DINO weighted 20-NN, cosine, T = 0.07')
    print(f'total time: {minutes:.1f} min')
    work_dir = osp.join(args.work_dir, 'pretrain')
    curves = plot_run.plot(plot_run.read_curves(plot_run.run_logs(work_dir)),
                           osp.join(work_dir, 'curves.png'))
    print(f'training curves: {curves}')
    print('=' * 72)


if __name__ == '__main__':
    main()
