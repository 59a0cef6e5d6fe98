"""Every fix m3i_mm applies to upstream code, in one place.

Applied once by ``import m3i_mm``. Each patch names the upstream versions it
is for and is written so that it is a no-op where the upstream code is fine.
Tested on the pinned stack of ``requirements/env.txt`` (the OneDL line:
onedl-mmengine 0.10.12, onedl-mmcv 2.3.6, onedl-mmdetection 3.5.1,
onedl-mmsegmentation 1.4.2, onedl-mmpretrain 1.3.6, torch 2.13, numpy 2) and
written to keep the upstream line (mmengine 0.10.7, mmcv 2.1, mmdet 3.3,
mmseg 1.2.2, mmpretrain 1.2.0) working where a shim is enough.
"""
import ctypes
import io
import logging
import os
import os.path as osp
import pickle
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from typing import Any, Callable, List, Union

import numpy as np
import torch

_APPLIED = False

# Environment variable that lets a user load a checkpoint they trust with
# full pickle (``weights_only=False``). Never set by m3i_mm itself.
TRUST_ENV = 'M3I_TRUST_CHECKPOINTS'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds a pickled object outside the allow-list."""


def checkpoint_safe_globals() -> List[Any]:
    """Objects a training checkpoint may legitimately contain besides tensors.

    mmengine stores its message hub (``HistoryBuffer`` holding numpy arrays
    and scalars) in every checkpoint; the rest are numpy's pickling helpers
    (numpy 2 pickles dtypes through ``getattr`` on allow-listed objects).
    The same list as onedl-mmengine 0.10.12's ``get_torch_safe_globals``.

    Returns:
        list: Classes and functions for ``torch.serialization``'s allow-list.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = getattr(np, '_core', None) or np.core
    allow = [
        HistoryBuffer,
        getattr,
        slice,
        multiarray.multiarray._reconstruct,
        multiarray.multiarray.scalar,
        np.ndarray,
        np.dtype,
    ]
    # numpy >= 1.25 pickles dtypes through their classes (np.dtypes.*DType).
    for name in ('float64', 'float32', 'float16', 'int64', 'int32', 'int8',
                 'uint8', 'bool_'):
        allow.append(type(np.dtype(getattr(np, name))))
    return allow


def safe_torch_load(file: Union[str, io.IOBase],
                    map_location: Any = None,
                    weights_only: Union[bool, None] = None) -> Any:
    """``torch.load`` with an allow-list; never silently unpickles anything.

    Args:
        file (str | file-like): Checkpoint to read.
        map_location: Same as :func:`torch.load`.
        weights_only (bool, optional): ``False`` loads with full pickle (only
            for files you trust). ``None`` means the allow-listed safe load,
            unless the environment variable ``M3I_TRUST_CHECKPOINTS=1`` is set.

    Returns:
        The loaded object.

    Raises:
        UnsafeCheckpointError: The file holds an object outside the
            allow-list; the message names the file and the object.
    """
    if weights_only is None:
        weights_only = os.environ.get(TRUST_ENV, '0') != '1'
    if not weights_only:
        return torch.load(file, map_location=map_location, weights_only=False)
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        try:
            return torch.load(
                file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            name = file if isinstance(file, str) else repr(file)
            found = re.search(r'GLOBAL ([\w.]+)', str(err))
            what = found.group(1) if found else str(err).splitlines()[0]
            raise UnsafeCheckpointError(
                f'Refusing to load checkpoint {name}: it contains a pickled '
                f'object outside the allow-list ({what}). If you trust this '
                f'file, set {TRUST_ENV}=1.') from None


def _patch_checkpoint_loading() -> None:
    """mmengine: allow-listed loading instead of full unpickling.

    - onedl-mmengine 0.10.12 ``_safe_torch_load`` falls back to
      ``weights_only=False`` on any unpickling error, i.e. it would run
      arbitrary pickled code from an untrusted file. We replace it.
    - mmengine 0.10.7 calls ``torch.load`` with torch's default, which is
      ``weights_only=True`` since torch 2.6 and fails on ``HistoryBuffer``
      when resuming. We allow-list the globals mmengine writes.
    """
    from mmengine.runner import checkpoint as ckpt
    if hasattr(ckpt, '_safe_torch_load'):
        ckpt._safe_torch_load = safe_torch_load
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


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


def _atomic_write(data: Union[bytes, str], filepath: str, mode: str,
                  encoding: Union[str, None] = None) -> None:
    """Write ``filepath`` all at once: a temporary file in the same folder,
    fsync, rename, fsync of the folder. A kill at any moment leaves the old
    or the new content, never a part. The file gets the umask's mode like
    any other output (``mkstemp`` alone gives 0600)."""
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
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
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


def _patch_atomic_local_writes() -> None:
    """mmengine (all 0.10.x): write local files atomically.

    ``LocalBackend.put``/``put_text`` write in place, so a job killed while
    saving leaves a truncated checkpoint (and ``last_checkpoint`` pointing
    at it). We write to a temporary file in the same folder and rename it.
    """
    from mmengine.fileio.backends.local_backend import LocalBackend

    def put(self, obj: bytes, filepath) -> None:
        _atomic_write(obj, filepath, 'wb')

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        _atomic_write(obj, filepath, 'w', encoding=encoding)

    LocalBackend.put = put
    LocalBackend.put_text = put_text


def _remove_checkpoint(backend: Any, path: str) -> None:
    if backend.isfile(path):
        backend.remove(path)
    elif backend.isdir(path):  # DeepSpeed checkpoints are folders
        backend.rmtree(path)


def _patch_checkpoint_rotation() -> None:
    """mmengine (onedl-mmengine 0.10.12, mmengine 0.10.7): never lose the
    last checkpoint.

    ``CheckpointHook._save_checkpoint_with_step`` removes the oldest kept
    checkpoint *before* writing the new one and writes ``last_checkpoint``
    with a plain ``open('w')``: with ``max_keep_ckpts=1`` a kill during a
    save leaves no checkpoint, or an empty ``last_checkpoint``. Here the new
    checkpoint, then ``last_checkpoint``, are written atomically and
    durably, and only then is the dropped one removed (likewise the previous
    best checkpoint of ``save_best``, which ``_save_best_checkpoint``
    removes first too); temporary files a killed save left are removed at
    the start of training and after each save.
    """
    from mmengine.dist import is_main_process
    from mmengine.hooks import CheckpointHook

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        dropped = None
        kept = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            kept = list(self.keep_ckpt_ids)
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                dropped = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        try:
            runner.save_checkpoint(
                self.out_dir,
                filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
        except BaseException:
            if kept is not None:  # nothing was written: keep the old list
                self.keep_ckpt_ids.clear()
                self.keep_ckpt_ids.extend(kept)
                runner.message_hub.update_info('keep_ckpt_ids', kept)
            raise
        if not is_main_process():
            return
        _atomic_write(self.last_ckpt, osp.join(runner.work_dir,
                                               'last_checkpoint'), 'w')
        if dropped is not None:
            _remove_checkpoint(
                self.file_backend,
                self.file_backend.join_path(self.out_dir,
                                            self.filename_tmpl.format(dropped)))
        for folder in {runner.work_dir, self.out_dir}:
            remove_stale_temp_files(folder)

    before_train = CheckpointHook.before_train

    def before_train_cleaning(self, runner) -> None:
        before_train(self, runner)
        if is_main_process():
            for folder in {runner.work_dir, self.out_dir}:
                for path in remove_stale_temp_files(folder):
                    runner.logger.info(
                        f'Removed {path}, left by an interrupted save.')

    save_best = CheckpointHook._save_best_checkpoint

    def _save_best_checkpoint(self, runner, metrics) -> None:
        # Upstream removes the previous best before saving the new one:
        # defer every removal until the new checkpoints are written.
        backend, pending = self.file_backend, []
        backend.remove = backend.rmtree = pending.append
        try:
            save_best(self, runner, metrics)
        finally:
            del backend.remove, backend.rmtree
        kept = {self.last_ckpt, getattr(self, 'best_ckpt_path', None),
                *getattr(self, 'best_ckpt_path_dict', {}).values()}
        for path in pending:
            if path not in kept:
                _remove_checkpoint(backend, path)

    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_with_step
    CheckpointHook._save_best_checkpoint = _save_best_checkpoint
    CheckpointHook.before_train = before_train_cleaning


_CKPT_NAME = re.compile(r'^(?:epoch|iter)_(\d+)\.pth$')


def _intact_checkpoint(path: str) -> bool:
    """A folder (DeepSpeed) or a complete zip file (``torch.save``): a
    truncated file has no zip end record."""
    return osp.isdir(path) or (osp.isfile(path) and zipfile.is_zipfile(path))


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
    """
    from mmengine.logging import print_log
    record = osp.join(work_dir, 'last_checkpoint')
    named = ''
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip()
        if '://' in named or (named and _intact_checkpoint(named)):
            return named  # remote checkpoints are taken as they are
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


def _patch_find_latest_checkpoint() -> None:
    """mmengine (onedl-mmengine 0.10.12, mmengine 0.10.7): automatic
    ``--resume`` trusts ``last_checkpoint`` blindly: an empty one or one
    naming a deleted checkpoint fails the run. Use
    :func:`find_resumable_checkpoint` wherever mmengine looks it up."""
    import mmengine.runner
    from mmengine.runner import _flexible_runner, checkpoint, runner
    for module in (mmengine.runner, checkpoint, runner, _flexible_runner):
        module.find_latest_checkpoint = find_resumable_checkpoint


def _set_parent_death_signal() -> bool:
    """Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; False where unavailable."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval: float = 1.0) -> None:
    while True:
        time.sleep(interval)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)


class ExitWithParent:
    """``worker_init_fn`` wrapper: a DataLoader worker dies with its trainer.

    PyTorch's workers only notice a dead parent while waiting for work; a
    worker blocked on a full result queue, as persistent workers of a
    killed trainer are, lives on forever. On Linux the kernel kills the
    worker (``PR_SET_PDEATHSIG``) when the thread that started it ends, so
    build loaders' iterators in a thread that lives as long as they do (the
    Runner does: its main thread); elsewhere a thread polls the parent PID
    every second.

    Args:
        init_fn (callable, optional): The loader's own ``worker_init_fn``,
            called after.
    """

    def __init__(self, init_fn: Union[Callable, None] = None) -> None:
        self.init_fn = init_fn
        self.parent_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        if os.getppid() == self.parent_pid and _set_parent_death_signal():
            if os.getppid() != self.parent_pid:  # died before prctl took
                os._exit(1)
        else:
            threading.Thread(
                target=_watch_parent, args=(self.parent_pid, ),
                daemon=True).start()
        if self.init_fn is not None:
            self.init_fn(worker_id)


def _patch_dataloader_workers() -> None:
    """mmengine (onedl-mmengine 0.10.12, mmengine 0.10.7) with torch 2.x:
    after ``kill -9`` of a trainer its persistent DataLoader workers live
    on as orphans. Every loader ``Runner.build_dataloader`` returns gets
    :class:`ExitWithParent` around its ``worker_init_fn``."""
    from mmengine.runner import _flexible_runner, runner

    def wrap(build: Callable) -> staticmethod:

        def build_dataloader(*args, **kwargs):
            loader = build(*args, **kwargs)
            if (loader.num_workers > 0
                    and not isinstance(loader.worker_init_fn, ExitWithParent)):
                loader.worker_init_fn = ExitWithParent(loader.worker_init_fn)
            return loader

        return staticmethod(build_dataloader)

    for cls in (runner.Runner, _flexible_runner.FlexibleRunner):
        cls.build_dataloader = wrap(cls.build_dataloader)


def _patch_numpy2_aliases() -> None:
    """numpy 2 removed aliases still used by upstream code.

    - ``np.sctypes``: imgaug 0.4 (imported at module top by
      onedl-mmdetection 3.5.1 ``mmdet/datasets/transforms/generate_line.py``).
    - ``np.float``: mmcv 2.1 ``ops/pixel_group.py``, mmdet 3.3
      ``evaluation/functional/ytviseval.py``, lvis 0.5.3 ``eval.py``
      (``LVISEval.accumulate``, used by mmdet's ``LVISMetric``).
    - ``np.in1d`` is deprecated (removed in numpy 2.4): mmpretrain 1.2
      ``evaluation/metrics/retrieval.py``.
    """
    if not hasattr(np, 'sctypes'):
        np.sctypes = {
            'int': [np.int8, np.int16, np.int32, np.int64],
            'uint': [np.uint8, np.uint16, np.uint32, np.uint64],
            'float': [np.float16, np.float32, np.float64],
            'complex': [np.complex64, np.complex128],
            'others': [bool, object, bytes, str, np.void],
        }
    if 'float' not in np.__dict__:
        np.float = float
    if not hasattr(np, 'in1d'):
        np.in1d = np.isin


def _patch_transformers_moved_names() -> None:
    """transformers >= 4.40 / 5.x moved names upstream mmpretrain 1.2 imports.

    ``mmpretrain/models/multimodal/blip/language_model.py`` and
    ``ofa/ofa_modules.py`` (upstream 1.2.0) import ``apply_chunking_to_forward``
    etc. and ``GenerationMixin`` from ``transformers.modeling_utils``. The OneDL
    fork imports them from their new homes; for upstream we re-export them.
    """
    try:
        import transformers.modeling_utils as modeling_utils
    except Exception:  # transformers is optional for the upstream shim
        return
    moved = {}
    try:
        from transformers import pytorch_utils
        for name in ('apply_chunking_to_forward',
                     'find_pruneable_heads_and_indices',
                     'prune_linear_layer'):
            if hasattr(pytorch_utils, name):
                moved[name] = getattr(pytorch_utils, name)
    except ImportError:
        pass
    try:
        from transformers.generation import GenerationMixin
        moved['GenerationMixin'] = GenerationMixin
    except ImportError:
        pass
    for name, obj in moved.items():
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, obj)


def _patch_config_package_scopes() -> None:
    """onedl-mmengine 0.10.12: ``_base_ = 'mmseg::...'`` with the OneDL line.

    mmengine resolves a config scope through ``MODULE2PACKAGE`` (``mmseg`` ->
    distribution ``mmsegmentation``), which is not installed when the fork
    ``onedl-mmsegmentation`` provides the module. Point such scopes at the
    installed ``onedl-`` distribution.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    from mmengine.config import utils
    for module, package in list(utils.MODULE2PACKAGE.items()):
        for candidate in (package, f'onedl-{package}'):
            try:
                distribution(candidate)
            except PackageNotFoundError:
                continue
            utils.MODULE2PACKAGE[module] = candidate
            break


def _upstream_mmpretrain() -> bool:
    try:
        from importlib.metadata import distribution
        distribution('mmpretrain')
        return True
    except Exception:
        return False


def apply() -> None:
    """Apply every patch once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_numpy2_aliases()
    if _upstream_mmpretrain():
        _patch_transformers_moved_names()
    _patch_checkpoint_loading()
    _patch_atomic_local_writes()
    _patch_checkpoint_rotation()
    _patch_find_latest_checkpoint()
    _patch_dataloader_workers()
    _patch_config_package_scopes()
    warnings.filterwarnings(
        'ignore', message='.*torch.meshgrid.*indexing.*', category=UserWarning)
    _APPLIED = True
