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
import difflib
import functools
import logging
import os
import os.path as osp
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from typing import Any, Callable, Iterable, List, Optional, Union

import numpy as np
import torch

_APPLIED = False


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


def close_matches(value: str, known: Iterable[str],
                  cutoff: float = 0.6) -> str:
    """`` (did you mean 'a', 'b'?)`` for the known names close to ``value``
    (``difflib`` ratio >= ``cutoff``), else an empty string."""
    found = difflib.get_close_matches(
        value, sorted(set(known)), n=3, cutoff=cutoff)
    return f' (did you mean {", ".join(map(repr, found))}?)' if found else ''


def _registry_names(registry) -> List[str]:
    """Names registered in ``registry`` and its ancestors."""
    names = []
    while registry is not None:
        names.extend(registry.module_dict)
        registry = registry.parent
    return names


def _patch_optimizer_type_check() -> None:
    """mmengine (all 0.10.x): an unknown ``optim_wrapper.optimizer.type``
    (e.g. ``AdamWW``) fails in ``DefaultOptimWrapperConstructor.__call__``
    with ``None is not a callable object``. We check the type when the
    constructor is built and raise ``KeyError`` naming it and close names.
    """
    from mmengine.optim import DefaultOptimWrapperConstructor
    from mmengine.registry import OPTIMIZERS
    init = DefaultOptimWrapperConstructor.__init__
    if hasattr(init, '_m3i_checks_type'):
        return

    @functools.wraps(init)
    def checked_init(self, optim_wrapper_cfg: dict, *args, **kwargs):
        init(self, optim_wrapper_cfg, *args, **kwargs)
        name = self.optimizer_cfg.get('type')
        if not isinstance(name, str):
            return
        with OPTIMIZERS.switch_scope_and_registry(None) as registry:
            if registry.get(name) is None:
                raise KeyError(
                    f'optim_wrapper.optimizer.type={name!r} is not in the '
                    f'{registry.scope}::optimizer registry'
                    f'{close_matches(name, _registry_names(registry))}')

    checked_init._m3i_checks_type = True
    DefaultOptimWrapperConstructor.__init__ = checked_init


class CheckpointMismatchError(RuntimeError):
    """A checkpoint given by ``load_from`` does not fit the model."""


def _mismatch_lists(message: str) -> dict:
    """Keys named in mmengine's ``load_state_dict`` strict error message."""
    lists = {}
    for kind, pattern in (('unexpected', r'unexpected key in source '
                           r'state_dict: ([^\n]*)'),
                          ('missing', r'missing keys in source '
                           r'state_dict: ([^\n]*)')):
        found = re.search(pattern, message)
        lists[kind] = found.group(1).split(', ') if found else []
    lists['mismatched'] = re.findall(r'size mismatch for ([^:]+):', message)
    return lists


def _patch_strict_load_from() -> None:
    """mmengine (all 0.10.x): ``load_from`` (and ``tools/test.py``'s
    checkpoint) loads non-strictly; a checkpoint of another architecture
    only logs a warning and the run goes on with random weights.

    ``Runner.load_checkpoint`` without an explicit ``strict`` now follows the
    top-level config key ``load_strict``:

    - ``None`` (default): refuse a checkpoint of another architecture: one
      with a shape mismatch, or with more unexpected keys than loaded ones.
      Missing keys (a pre-trained backbone for a model with a new head) and
      a few unexpected ones (a converted backbone's final norm the
      downstream model does not use) only warn.
    - ``True``: refuse any difference (torch's ``strict=True``).
    - ``False``: load what matches, warn about the rest (mmengine's
      behaviour).

    The refusal (:class:`CheckpointMismatchError`) names the file and the
    keys. Only rank 0 detects it (mmengine's check), which ends the job.
    """
    from mmengine.runner import Runner
    load = Runner.load_checkpoint
    if hasattr(load, '_m3i_strict'):
        return

    @functools.wraps(load)
    def load_checkpoint(self, filename: str, map_location='cpu',
                        strict: Optional[bool] = None,
                        revise_keys: list = [(r'^module.', '')]):
        if strict is not None:
            return load(self, filename, map_location, strict, revise_keys)
        mode = self.cfg.get('load_strict', None)
        if mode not in (None, True, False):
            raise ValueError(f'load_strict must be None, True or False, got '
                             f'{mode!r}')
        if mode is False:
            return load(self, filename, map_location, False, revise_keys)
        try:
            return load(self, filename, map_location, True, revise_keys)
        except RuntimeError as err:
            keys = _mismatch_lists(str(err))
            if not any(keys.values()):
                raise
            model = self.model.module if hasattr(self.model,
                                                 'module') else self.model
            loaded = sum('num_batches_tracked' not in k
                         for k in model.state_dict()) - len(
                             keys['missing']) - len(keys['mismatched'])
            if not mode and not keys['mismatched'] and len(
                    keys['unexpected']) <= loaded:
                return load(self, filename, map_location, False, revise_keys)
            summary = '; '.join(
                f'{len(names)} {kind} key(s): {", ".join(names[:5])}'
                f'{", ..." if len(names) > 5 else ""}'
                for kind, names in keys.items() if names)
            raise CheckpointMismatchError(
                f'Checkpoint {filename} does not fit the model '
                f'{type(self.model).__name__} ({summary}). Set '
                'load_strict=False (e.g. --cfg-options load_strict=False) to '
                'load the matching weights anyway.') from None

    load_checkpoint._m3i_strict = True
    Runner.load_checkpoint = load_checkpoint


def _no_accelerator() -> bool:
    from mmengine.device import (is_cuda_available, is_mlu_available,
                                 is_musa_available, is_npu_available)
    return not (is_cuda_available() or is_npu_available()
                or is_mlu_available() or is_musa_available())


def _patch_cpu_distributed() -> None:
    """mmengine (onedl 0.10.12, upstream 0.10.7): ``--launcher pytorch``
    on CPU.

    - ``mmengine.dist.utils._init_dist_pytorch`` calls
      ``torch.cuda.set_device`` unconditionally ("Found no NVIDIA driver")
      and uses the config's backend, ``nccl`` in our runtime. Without an
      accelerator we skip ``set_device`` and use ``gloo`` (any other backend
      is kept); on a GPU nothing changes.
    - ``Runner.wrap_model`` gives DDP ``device_ids=[LOCAL_RANK]`` also for a
      model on the CPU, which DDP refuses; for a CPU model they are dropped.
    """
    from mmengine.dist import utils as dist_utils
    from mmengine.logging import print_log
    from mmengine.model.wrappers import MMDistributedDataParallel

    init_on_device = dist_utils._init_dist_pytorch

    def _init_dist_pytorch(backend, init_backend='torch', **kwargs) -> None:
        if init_backend != 'torch' or not _no_accelerator():
            return init_on_device(backend, init_backend=init_backend, **kwargs)
        if backend == 'nccl':
            print_log('No GPU: torch.distributed uses gloo instead of nccl',
                      logger='current')
            backend = 'gloo'
        torch.distributed.init_process_group(backend=backend, **kwargs)

    dist_utils._init_dist_pytorch = _init_dist_pytorch

    wrap = MMDistributedDataParallel.__init__

    def __init__(self, module, detect_anomalous_params=False, **kwargs):
        if kwargs.get('device_ids') is not None and all(
                p.device.type == 'cpu' for p in module.parameters()):
            kwargs['device_ids'] = None
        wrap(self, module, detect_anomalous_params, **kwargs)

    MMDistributedDataParallel.__init__ = __init__


def _patch_amp_on_cpu() -> None:
    """mmengine (onedl 0.10.12, upstream 0.10.7): bf16 ``AmpOptimWrapper``
    on CPU.

    ``AmpOptimWrapper.__init__`` asserts a CUDA/NPU/MLU/MUSA device, although
    its ``optim_context`` uses mmengine's ``autocast``, which runs
    ``torch.autocast('cpu', dtype=torch.bfloat16)`` on CPU. Without an
    accelerator we build it for bf16 with a disabled loss scaler (bf16 has
    fp32's range) and refuse other dtypes with the remedy; on a GPU nothing
    changes.
    """
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    init_on_device = AmpOptimWrapper.__init__

    def __init__(self, loss_scale='dynamic', dtype=None, use_fsdp=False,
                 **kwargs) -> None:
        if not _no_accelerator():
            init_on_device(self, loss_scale, dtype, use_fsdp, **kwargs)
            return
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(
                f'AmpOptimWrapper(dtype={dtype!r}) without a GPU: CPU '
                f'autocast runs bfloat16 only; use dtype="bfloat16" '
                f'(tools/train.py --precision bf16)')
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16

    AmpOptimWrapper.__init__ = __init__


def _patch_seeded_fetch() -> None:
    """torch (2.x) ``DataLoader``: seed each sample's transforms from its index.

    mmengine (0.10.x) seeds a data worker once, from ``seed + rank *
    num_workers + worker_id``, so the random transforms of a sample depend on
    which worker loads it and on what that worker loaded before: a resumed
    run (onedl-mmengine 0.10.12 fast-forwards the sampler and starts fresh
    workers) and every new pass with ``persistent_workers=False`` repeat the
    draws of the first batches. For indices that are
    :class:`m3i_mm.utils.randomness.SeededIndex` (yielded by
    :class:`m3i_mm.engine.hooks.SeededSampler`), the map-style fetcher seeds
    the process's generators with the index's seed before loading the
    sample; plain indices are fetched as before.
    """
    from torch.utils.data._utils import fetch

    from m3i_mm.utils.randomness import SeededIndex, seed_all
    upstream = fetch._MapDatasetFetcher.fetch
    if getattr(upstream, '_m3i_seeded', False):
        return

    def seeded_fetch(self, possibly_batched_index):
        indices = possibly_batched_index if self.auto_collation else [
            possibly_batched_index
        ]
        if not any(isinstance(i, SeededIndex) for i in indices):
            return upstream(self, possibly_batched_index)
        data = []
        for index in indices:
            if isinstance(index, SeededIndex):
                seed_all(index.seed)
            data.append(self.dataset[index])
        return self.collate_fn(data if self.auto_collation else data[0])

    seeded_fetch._m3i_seeded = True
    fetch._MapDatasetFetcher.fetch = seeded_fetch


def _quiet_print_log(print_log):
    """Wrap mmengine's ``print_log`` so that debug messages without a logger
    go to :mod:`logging` (hidden by default) instead of ``print``."""

    @functools.wraps(print_log)
    def wrapper(msg, logger=None, level=logging.INFO) -> None:
        if logger is None and level < logging.INFO:
            logging.getLogger(__name__).log(level, msg)
            return
        print_log(msg, logger=logger, level=level)

    wrapper.__wrapped_by_m3i__ = True
    return wrapper


def _patch_debug_print_log() -> None:
    """mmengine 0.10.x ``print_log(msg, level=DEBUG)`` prints unconditionally.

    With no ``logger`` it calls ``print`` and ignores ``level``, so the
    debug messages of onedl-mmdetection 3.5.1 (``mmdet.datasets`` and
    ``.transforms``), onedl-mmsegmentation 1.4.2 and onedl-mmpretrain 1.3.6
    (``datasets/__init__.py``: "Could not import OneDL", printed when the
    optional ``onedl`` package is absent) appear on every run. Those modules
    look ``print_log`` up in ``mmengine.logging`` when they are imported, so
    this must run before them: ``import m3i_mm`` applies it first.
    """
    from mmengine import logging as mm_logging
    from mmengine.logging import logger as mm_logger
    if getattr(mm_logging.print_log, '__wrapped_by_m3i__', False):
        return
    quiet = _quiet_print_log(mm_logging.print_log)
    mm_logging.print_log = quiet
    mm_logger.print_log = quiet


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
    _patch_debug_print_log()
    _patch_numpy2_aliases()
    if _upstream_mmpretrain():
        _patch_transformers_moved_names()
    _patch_atomic_local_writes()
    _patch_checkpoint_rotation()
    _patch_find_latest_checkpoint()
    _patch_dataloader_workers()
    _patch_config_package_scopes()
    _patch_optimizer_type_check()
    _patch_strict_load_from()
    _patch_cpu_distributed()
    _patch_amp_on_cpu()
    _patch_seeded_fetch()
    warnings.filterwarnings(
        'ignore', message='.*torch.meshgrid.*indexing.*', category=UserWarning)
    _APPLIED = True
