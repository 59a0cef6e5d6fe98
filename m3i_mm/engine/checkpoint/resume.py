"""Which checkpoint automatic ``--resume`` continues from.

mmengine's ``find_latest_checkpoint`` (onedl-mmengine 0.10.12, mmengine
0.10.7) trusts ``last_checkpoint`` blindly: an empty one or one naming a
deleted checkpoint fails the run, one naming a URL or another folder is
loaded from there, and a damaged checkpoint is resumed from (a bit flip in
a weight turns the loss NaN an iteration later).
:func:`find_resumable_checkpoint` is used instead by
:class:`m3i_mm.engine.M3IRunner`, and :func:`checkpoint_damage` checks a
whole checkpoint before it is trusted.
"""
import logging
import os
import os.path as osp
import re
import zipfile
from typing import Any, Iterator, List, Tuple, Union

import torch
from mmengine.logging import print_log

from .loader import load_checkpoint_file
from .parser import NotACheckpointError

__all__ = [
    'NoIntactCheckpointError', 'checkpoint_damage',
    'find_resumable_checkpoint'
]

_CKPT_NAME = re.compile(r'^(?:epoch|iter)_(\d+)\.pth$')
# What a resumed run continues with: the weights (EMA included) and the
# optimizer state; ``FiniteCheckHook`` checks the same before every save.
# (Logged scalars may be inf with fp16 loss scaling and are not checked.)
_FINITE_PARTS = ('state_dict', 'optimizer')


class NoIntactCheckpointError(RuntimeError):
    """``--resume`` found checkpoints, none of them intact; names each."""


def _tensors(value: Any, prefix: str) -> Iterator[Tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f'{prefix}.{key}')
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f'{prefix}.{i}')


def checkpoint_damage(path: str) -> Union[str, None]:
    """Why the checkpoint ``path`` must not be resumed from, or None.

    A ``torch.save`` zip file must be complete, every member must match its
    CRC-32 (``zipfile.ZipFile.testzip``), it must parse
    (:func:`m3i_mm.engine.checkpoint.load_checkpoint_file`) and its
    weights and optimizer state must be finite. A folder (DeepSpeed) is
    only checked to exist.

    Args:
        path (str): A local checkpoint.

    Returns:
        str | None: The damage, in words; None for an intact checkpoint.
    """
    if osp.isdir(path):
        return None
    if not osp.isfile(path):
        return 'it is missing'
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f'its member {bad} fails its CRC-32 check'
        checkpoint = load_checkpoint_file(path, map_location='cpu')
    except (zipfile.BadZipFile, NotACheckpointError, OSError) as err:
        return f'it is truncated or damaged ({err})'
    if not isinstance(checkpoint, dict):
        return 'it holds no checkpoint dict'
    for part in _FINITE_PARTS:
        for name, tensor in _tensors(checkpoint.get(part), part):
            if (tensor.is_floating_point() or tensor.is_complex()) and \
                    not torch.isfinite(tensor).all():
                return f'{name} holds NaN or inf'
    return None


def _check_inside(record: str, named: str, work_dir: str) -> None:
    """Refuse a ``last_checkpoint`` naming a URL or a path outside
    ``work_dir``: automatic resume loads only the run's own checkpoints."""
    if '://' in named:
        where = 'a URL'
    else:
        root = osp.realpath(work_dir)
        if osp.commonpath([root, osp.realpath(named)]) == root:
            return
        where = f'outside the work dir {work_dir}'
    raise ValueError(
        f'{record} names {named!r}, {where}: automatic --resume only '
        'continues from a checkpoint of the work dir. Pass a local '
        'checkpoint you trust explicitly (--resume PATH) or remove the file.')


def _newest_first(work_dir: str) -> List[str]:
    """``epoch_N.pth``/``iter_N.pth`` of ``work_dir``, newest (modification
    time, then N) first."""
    found = []
    for name in (os.listdir(work_dir) if osp.isdir(work_dir) else []):
        match = _CKPT_NAME.match(name)
        path = osp.join(work_dir, name)
        if match and (osp.isfile(path) or osp.isdir(path)):
            found.append((os.stat(path).st_mtime_ns, int(match.group(1)),
                          path))
    return [path for *_, path in sorted(found, reverse=True)]


def find_resumable_checkpoint(work_dir: str) -> Union[str, None]:
    """The checkpoint automatic ``--resume`` continues from.

    ``last_checkpoint``'s target when it is intact
    (:func:`checkpoint_damage`); otherwise (the record is missing or empty,
    or names a missing, truncated or damaged checkpoint) the newest intact
    ``epoch_N.pth``/``iter_N.pth`` of ``work_dir`` (by modification time,
    then N), with a warning naming both.

    Args:
        work_dir (str): The run's work dir.

    Returns:
        str | None: Path to resume from; None when the work dir holds no
        checkpoint at all (training starts from scratch).

    Raises:
        ValueError: ``last_checkpoint`` names a URL or a path outside
            ``work_dir``; the message names the record and its content.
        NoIntactCheckpointError: There are checkpoints but none is intact;
            the message names each and its damage. ``--resume`` never
            starts over silently.
    """
    record = osp.join(work_dir, 'last_checkpoint')
    named = ''
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip()
    damaged = []
    if named:
        _check_inside(record, named, work_dir)
        damage = checkpoint_damage(named)
        if damage is None:
            return named
        damaged.append((named, damage))
        problem = f'{record} names {named!r}, which is unusable: {damage}'
    else:
        problem = f'{record} is missing or empty'
    for path in _newest_first(work_dir):
        if named and osp.realpath(path) == osp.realpath(named):
            continue
        damage = checkpoint_damage(path)
        if damage is None:
            print_log(f'{problem}; resuming from the newest intact checkpoint '
                      f'{path} instead.', logger='current',
                      level=logging.WARNING)
            return path
        print_log(f'Not resuming from {path}: {damage}.', logger='current',
                  level=logging.WARNING)
        damaged.append((path, damage))
    if damaged:
        raise NoIntactCheckpointError(
            f'--resume found no intact checkpoint in {work_dir}: ' +
            '; '.join(f'{path}: {damage}' for path, damage in damaged) +
            '. Pass an intact one (--resume PATH), or run without --resume '
            'to start over.')
    print_log(f'{problem}, and {work_dir} holds no checkpoint: nothing to '
              'resume.', logger='current')
    return None
