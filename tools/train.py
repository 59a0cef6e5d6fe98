"""Train a model from an m3i_mm (or any mmpretrain/mmdet/mmseg) config.

Usage:
    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]
        [--precision fp32|fp16|bf16] [--amp] [--auto-scale-lr]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

``--precision`` replaces the config's choice (``configs/_base_/precision``);
``--amp`` is mixed precision on whatever is there: fp16 on a GPU, bf16 on a
CPU. On a CPU, ``--launcher pytorch`` (``tools/dist_train.sh``) uses gloo.
The runner is the config's ``runner_type`` (``M3IRunner`` in m3i_mm's
configs; mmengine's ``Runner`` without one).

Refused before the run is built (exit code 2, naming the option): a
``--cfg-options`` item without ``=`` or with a value of another kind than
the config's (``lr=1e-3x``), ``--resume`` of a folder or of a file that
is no ``torch.save`` archive (:func:`m3i_mm.engine.checkpoint.check_archive`),
and ``--auto-scale-lr`` on a config without ``auto_scale_lr.base_batch_size``.
"""
import argparse
import os
import os.path as osp
from typing import Optional

import m3i_mm  # noqa: F401  (compat fixes + registration before anything else)
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import RUNNERS

from m3i_mm.engine.checkpoint import NotACheckpointError, check_archive
from m3i_mm.utils import (CfgOptionsAction, check_option_values,
                          warn_misspelt_keys)

PRECISIONS = ('fp32', 'fp16', 'bf16')
AMP_WRAPPERS = ('AmpOptimWrapper', 'CPUAwareAmpOptimWrapper')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint; without a path, from the '
        'latest checkpoint in the work dir')
    parser.add_argument(
        '--precision',
        choices=PRECISIONS,
        help='fp32, fp16 (dynamic loss scaling, GPU) or bf16 (GPU or CPU) '
        'instead of the config\'s choice')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='mixed precision: fp16 on a GPU, bf16 on a CPU')
    parser.add_argument(
        '--no-validate', action='store_true', help='skip validation')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override config settings, e.g. train_cfg.max_iters=10')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_args(parser: Optional[argparse.ArgumentParser] = None
               ) -> argparse.Namespace:
    args = (parser or build_parser()).parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def check_resume(path: str) -> None:
    """Refuse a ``--resume`` path that is no checkpoint file, naming it.

    Raises:
        ValueError: A URL (resume reads local files only).
        FileNotFoundError: Nothing at ``path``.
        IsADirectoryError: A folder.
        NotACheckpointError: Not a ``torch.save`` archive.
        UnsafeCheckpointError: An archive the parser refuses (see
            :func:`check_archive`).
    """
    if '://' in path:
        raise ValueError(f'--resume takes a local checkpoint file, not the '
                         f'URL {path}: download it first')
    if osp.isdir(path):
        raise IsADirectoryError(
            f'--resume {path} is a folder; give a checkpoint file in it, or '
            f'--resume without a path to resume from the latest checkpoint '
            f'of --work-dir')
    if not osp.isfile(path):
        raise FileNotFoundError(f'--resume checkpoint not found: {path}')
    check_archive(path)


def set_precision(cfg: Config, precision: str) -> None:
    """Replace the optimizer wrapper's type, dtype and loss scale by those
    of ``configs/_base_/precision/<precision>.py`` (other keys stay)."""
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                    'configs', '_base_', 'precision', f'{precision}.py')
    wrapper = cfg.optim_wrapper
    for key in ('type', 'dtype', 'loss_scale'):
        wrapper.pop(key, None)
    wrapper.update(ConfigDict(Config.fromfile(path).optim_wrapper))


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the command-line options to the config."""
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    if args.precision is not None:
        set_precision(cfg, args.precision)
    elif args.amp and cfg.optim_wrapper.get('type') not in AMP_WRAPPERS:
        set_precision(cfg, 'fp16' if torch.cuda.is_available() else 'bf16')

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        check_resume(args.resume)
        cfg.resume = True
        cfg.load_from = args.resume

    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    if args.cfg_options is not None:
        check_option_values(cfg, args.cfg_options)
        cfg.merge_from_dict(args.cfg_options)

    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg, args.config)
    return cfg


def enable_auto_scale_lr(cfg: Config, config: str) -> None:
    """Turn on mmengine's lr scaling (lr * total batch / base batch).

    Raises:
        ValueError: The config (after ``--cfg-options``) has no
            ``auto_scale_lr.base_batch_size``, naming ``config``.
    """
    scale = cfg.get('auto_scale_lr')
    if not isinstance(scale, dict) or 'base_batch_size' not in scale:
        raise ValueError(
            f'--auto-scale-lr: {config} has no auto_scale_lr.base_batch_size '
            f'(the total batch size its lr is set for); pass --cfg-options '
            f'auto_scale_lr.base_batch_size=N')
    cfg.merge_from_dict({'auto_scale_lr.enable': True})


def main() -> None:
    parser = build_parser()
    args = parse_args(parser)
    try:
        cfg = merge_args(Config.fromfile(args.config), args)
    except (OSError, ValueError, NotACheckpointError) as err:
        parser.error(f'{type(err).__name__}: {err}')
    warn_misspelt_keys(cfg)
    runner = RUNNERS.build(cfg)  # runner_type, default mmengine's Runner
    runner.train()


if __name__ == '__main__':
    main()
