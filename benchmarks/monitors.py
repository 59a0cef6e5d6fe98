"""What do the training monitors cost? (README, "Training monitors")

Trains the demo (``configs/pretrain/m3i_vit-tiny_demo.py``) once, with its
:class:`~m3i_mm.engine.hooks.M3IMonitorHook` (held-out category, k-NN
top-1 on the 359 validation digits every ``interval`` iterations), and
times, in that one run, the whole training and the monitors inside it
(``M3IMonitorHook.seconds``). The run without monitors is the rest:

    ratio = monitor seconds / (run seconds - monitor seconds)

Goal: <= 2 % at the demo's interval (100).

Usage:
    python benchmarks/monitors.py [--iters 800] [--interval 100]
        [--data-root data/demo_digits] [--work-dir work_dirs/bench_monitors]
"""
import argparse
import os.path as osp
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import m3i_mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402

from m3i_mm.engine.hooks import M3IMonitorHook  # noqa: E402
from m3i_mm.utils import shorten_iter_schedule  # noqa: E402

CONFIG = osp.join(REPO, 'configs', 'pretrain', 'm3i_vit-tiny_demo.py')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=800)
    parser.add_argument('--interval', type=int, default=100)
    parser.add_argument('--data-root', default='data/demo_digits')
    parser.add_argument('--work-dir', default='work_dirs/bench_monitors')
    args = parser.parse_args()
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = args.work_dir
    shorten_iter_schedule(cfg, args.iters)
    cfg.default_hooks.monitor.interval = args.interval
    for loader in ('train_dataloader', 'monitor_dataloader'):
        cfg[loader].dataset.data_root = args.data_root
    runner = RUNNERS.build(cfg)
    hook, = (h for h in runner.hooks if isinstance(h, M3IMonitorHook))
    start = time.perf_counter()
    runner.train()
    total = time.perf_counter() - start
    evaluations = args.iters // args.interval
    without = total - hook.seconds
    print(f'demo, {args.iters} iterations, monitors every {args.interval} '
          f'({evaluations} evaluations of the 359 val digits)')
    print(f'run: {total:.1f} s; monitors: {hook.seconds:.2f} s '
          f'({hook.seconds / max(evaluations, 1):.2f} s each); '
          f'without monitors: {without:.1f} s')
    print(f'monitor cost ratio: {hook.seconds / without * 100:.2f} % '
          f'(goal <= 2 %)')


if __name__ == '__main__':
    main()
