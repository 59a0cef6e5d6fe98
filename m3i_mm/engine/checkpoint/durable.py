"""Durable local files: a kill at any moment leaves the old or the new file.

mmengine (onedl-mmengine 0.10.12, mmengine 0.10.7) writes local files in
place (``LocalBackend.put``/``put_text``), so a job killed while saving
leaves a truncated checkpoint. :class:`DurableLocalBackend` is a file backend
of its own (``backend_args=dict(backend='durable_local')``, mmengine's
``register_backend``) that writes atomically;
:class:`m3i_mm.engine.hooks.DurableCheckpointHook` uses it.
"""
import os
import os.path as osp
import re
import tempfile
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = ['DurableLocalBackend', 'remove_stale_temp_files']


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Make a rename or removal in ``directory`` durable (POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # file systems without folder fsync
        pass
    finally:
        os.close(fd)


# ``_atomic_write``'s temporary files: '.<name>.<8 mkstemp chars>.tmp'.
_TEMP_NAME = re.compile(r'^\..+\.[a-z0-9_]{8}\.tmp$')


def _atomic_write(data: Union[bytes, str], filepath: Union[str, Path],
                  mode: str, encoding: Union[str, None] = None) -> None:
    """Write ``filepath`` all at once: a temporary file in the same folder,
    fsync, rename, fsync of the folder. A kill at any moment leaves the old
    or the new content, never a part. The file gets the umask's mode like
    any other output (``mkstemp`` alone gives 0600). An ``OSError`` that
    names no file (``write``/``fsync`` on a full disk: ``[Errno 28] No space
    left on device``) is raised again naming ``filepath``."""
    filepath = str(filepath)
    directory = osp.dirname(osp.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f'.{osp.basename(filepath)}.', suffix='.tmp')
    try:
        if hasattr(os, 'fchmod'):  # POSIX
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException as err:
        if osp.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno is not None and \
                err.filename is None:
            raise OSError(err.errno, err.strerror, filepath) from err
        raise
    _fsync_dir(directory)


def remove_stale_temp_files(directory: str) -> List[str]:
    """Remove the temporary files a killed :func:`_atomic_write` left.

    Call it only where no other process writes into ``directory`` at the
    same time (the main process of a run, on its work dir).

    Args:
        directory (str): Folder to clean; a missing one is fine.

    Returns:
        list[str]: The removed paths.
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        path = osp.join(directory, name)
        if _TEMP_NAME.match(name) and osp.isfile(path):
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


@register_backend('durable_local')
class DurableLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put``/``put_text`` write
    atomically and durably (:func:`_atomic_write`)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        _atomic_write(obj, filepath, 'wb')

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        _atomic_write(obj, filepath, 'w', encoding=encoding)
