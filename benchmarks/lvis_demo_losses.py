"""Compare box-classification losses on the long-tailed LVIS demo.

Trains ``configs/downstream/lvis/mask-rcnn_vitdet-tiny_m3i_lvis_demo.py``
for ``--iters`` steps (lr 4e-4, warm-up 20, x0.1 at 80 % and 92.5 %) with
three box-classifier losses and prints LVIS box / mask AP per frequency
group:

- ``federated``: the config's FederatedSigmoidLoss (4 of 11 classes),
- ``sigmoid``: the same loss over all 11 classes (plain sigmoid CE),
- ``softmax``: mmdet's softmax cross-entropy.

Usage::

    python benchmarks/lvis_demo_losses.py [--iters 400] [--seed 0]

About 3.5 minutes per loss at 400 steps on 2 idle CPU cores.
"""
import argparse
import os.path as osp
import sys
import tempfile

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
import m3i_mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS, DefaultScope  # noqa: E402

CONFIG = osp.join(REPO, 'configs', 'downstream', 'lvis',
                  'mask-rcnn_vitdet-tiny_m3i_lvis_demo.py')
LOSSES = {
    'federated': {},
    'sigmoid': dict(num_fed_classes=11),
    'softmax': dict(
        _delete_=True,
        type='CrossEntropyLoss',
        use_sigmoid=False,
        loss_weight=1.0),
}
KEYS = ('bbox_AP', 'bbox_APr', 'bbox_APc', 'bbox_APf', 'segm_AP')


def train_and_evaluate(loss: dict, iters: int, seed: int,
                       work_dir: str) -> dict:
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(
        dict(model=dict(roi_head=dict(bbox_head=dict(loss_cls=loss)))))
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    cfg.log_level = 'WARNING'
    cfg.optim_wrapper.optimizer.lr = 4e-4
    cfg.param_scheduler[0].end = 20
    cfg.param_scheduler[1].end = iters
    cfg.param_scheduler[1].milestones = [int(iters * 0.8), int(iters * 0.925)]
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters + 1  # evaluated once, below
    cfg.default_hooks.checkpoint.interval = iters
    with DefaultScope.overwrite_default_scope('mmdet'):
        runner = RUNNERS.build(cfg)  # the config's runner_type
        runner.train()
        return runner.val_loop.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=400)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, loss in LOSSES.items():
            metrics = train_and_evaluate(loss, args.iters, args.seed,
                                         osp.join(tmp, name))
            rows[name] = [100 * metrics['lvis/' + key] for key in KEYS]
    print(f'{"loss":<10}' + ''.join(f'{k:>10}' for k in KEYS))
    for name, values in rows.items():
        print(f'{name:<10}' + ''.join(f'{v:10.1f}' for v in values))


if __name__ == '__main__':
    main()
