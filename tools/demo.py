"""The README's main job: M3I pre-training on the demo digits, then probes.

1. Pre-train a tiny ViT with M3I (``configs/pretrain/m3i_vit-tiny_demo.py``)
   on the 1,438 training digits (labels used as the category target).
2. Linear-probe the frozen pre-trained backbone and, for comparison, the same
   backbone at random initialisation
   (``configs/downstream/linear-probe_vit-tiny_demo.py``).
3. Print both top-1 accuracies on the 359 validation digits.

Usage:
    python tools/demo.py [--work-dir work_dirs/demo] [--data-root DIR]
        [--pretrain-iters N] [--probe-iters N]
"""
import argparse
import os.path as osp
import time

import m3i_mm  # noqa: F401
from mmengine.config import Config
from mmengine.runner import Runner

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN_CFG = osp.join(REPO, 'configs', 'pretrain', 'm3i_vit-tiny_demo.py')
PROBE_CFG = osp.join(REPO, 'configs', 'downstream',
                     'linear-probe_vit-tiny_demo.py')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/demo_digits')
    parser.add_argument('--pretrain-iters', type=int, default=None)
    parser.add_argument('--probe-iters', type=int, default=None)
    return parser.parse_args()


def _set_data_root(cfg: Config, data_root: str) -> None:
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(name):
            cfg[name].dataset.data_root = data_root


def _set_iters(cfg: Config, iters: int) -> None:
    """Shorten an iteration-based schedule, keeping its shape."""
    cfg.train_cfg.max_iters = iters
    if 'val_interval' in cfg.train_cfg:
        cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters
    schedulers = [s for s in cfg.param_scheduler if s.get('begin', 0) < iters]
    for scheduler in schedulers:
        scheduler['end'] = min(scheduler.get('end', iters), iters)
    cfg.param_scheduler = schedulers


def pretrain(args) -> str:
    cfg = Config.fromfile(PRETRAIN_CFG)
    cfg.work_dir = osp.join(args.work_dir, 'pretrain')
    _set_data_root(cfg, args.data_root)
    if args.pretrain_iters:
        _set_iters(cfg, args.pretrain_iters)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return osp.join(cfg.work_dir, f'iter_{cfg.train_cfg.max_iters}.pth')


def linear_probe(args, checkpoint, name: str) -> float:
    cfg = Config.fromfile(PROBE_CFG)
    cfg.work_dir = osp.join(args.work_dir, f'probe_{name}')
    _set_data_root(cfg, args.data_root)
    if args.probe_iters:
        _set_iters(cfg, args.probe_iters)
    if checkpoint is not None:
        cfg.model.backbone.init_cfg = dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner.test()['accuracy/top1']


def main() -> None:
    args = parse_args()
    start = time.time()
    checkpoint = pretrain(args)
    minutes_pretrain = (time.time() - start) / 60
    acc_m3i = linear_probe(args, checkpoint, 'm3i')
    acc_random = linear_probe(args, None, 'random')
    minutes = (time.time() - start) / 60
    print('\n' + '=' * 64)
    print('M3I demo: tiny ViT (4 layers, 64 wide) on the demo digits, CPU')
    print(f'pre-training checkpoint: {checkpoint} '
          f'({minutes_pretrain:.1f} min)')
    print('linear probe, top-1 on the 359 validation digits:')
    print(f'  M3I pre-trained backbone : {acc_m3i:6.2f} %')
    print(f'  random-init backbone     : {acc_random:6.2f} %')
    print(f'total time: {minutes:.1f} min')
    print('=' * 64)


if __name__ == '__main__':
    main()
