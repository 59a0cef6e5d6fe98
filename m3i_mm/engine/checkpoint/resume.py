"""Which checkpoint automatic ``--resume`` continues from.

mmengine's ``find_latest_checkpoint`` (onedl-mmengine 0.10.12, mmengine
0.10.7) trusts ``last_checkpoint`` blindly: an empty one or one naming a
deleted checkpoint fails the run, and one naming a URL or another folder is
loaded from there. :func:`find_resumable_checkpoint` is used instead by
:class:`m3i_mm.engine.M3IRunner`.
"""
import logging
import os
import os.path as osp
import re
import zipfile
from typing import Union

from mmengine.logging import print_log

__all__ = ['find_resumable_checkpoint']

_CKPT_NAME = re.compile(r'^(?:epoch|iter)_(\d+)\.pth$')


def _intact_checkpoint(path: str) -> bool:
    """A folder (DeepSpeed) or a complete zip file (``torch.save``): a
    truncated file has no zip end record."""
    return osp.isdir(path) or (osp.isfile(path) and zipfile.is_zipfile(path))


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


def find_resumable_checkpoint(work_dir: str) -> Union[str, None]:
    """The checkpoint automatic ``--resume`` continues from.

    ``last_checkpoint``'s target when it is intact; otherwise (the file is
    missing, empty, or names a missing or truncated checkpoint) the newest
    intact ``epoch_N.pth``/``iter_N.pth`` of ``work_dir`` (by modification
    time, then N), with a warning naming both.

    Args:
        work_dir (str): The run's work dir.

    Returns:
        str | None: Path to resume from; None when there is nothing to
        resume (training starts from scratch).

    Raises:
        ValueError: ``last_checkpoint`` names a URL or a path outside
            ``work_dir``; the message names the record and its content.
    """
    record = osp.join(work_dir, 'last_checkpoint')
    named = ''
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip()
        if named:
            _check_inside(record, named, work_dir)
            if _intact_checkpoint(named):
                return named
    candidates = []
    for name in (os.listdir(work_dir) if osp.isdir(work_dir) else []):
        found = _CKPT_NAME.match(name)
        path = osp.join(work_dir, name)
        if found and _intact_checkpoint(path):
            candidates.append((os.stat(path).st_mtime_ns,
                               int(found.group(1)), path))
    problem = (f'{record} names {named!r}, which is missing or truncated'
               if named else f'{record} is missing or empty')
    if not candidates:
        print_log(f'{problem}, and {work_dir} holds no intact checkpoint: '
                  'nothing to resume.', logger='current')
        return None
    choice = max(candidates)[2]
    print_log(f'{problem}; resuming from the newest intact checkpoint '
              f'{choice} instead.', logger='current', level=logging.WARNING)
    return choice
