"""Every fix m3i_mm applies to upstream code, in one place.

Applied once by ``import m3i_mm``. Each patch names the upstream versions it
is for and is written so that it is a no-op where the upstream code is fine.
Tested on the pinned stack of ``requirements/env.txt`` (the OneDL line:
onedl-mmengine 0.10.12, onedl-mmcv 2.3.6, onedl-mmdetection 3.5.1,
onedl-mmsegmentation 1.4.2, onedl-mmpretrain 1.3.6, torch 2.13, numpy 2) and
written to keep the upstream line (mmengine 0.10.7, mmcv 2.1, mmdet 3.3,
mmseg 1.2.2, mmpretrain 1.2.0) working where a shim is enough.
"""
import functools
import io
import logging
import os
import os.path as osp
import pickle
import re
import tempfile
import warnings
from typing import Any, List, Union

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


def _atomic_write(data: Union[bytes, str], filepath: str, mode: str,
                  encoding: Union[str, None] = None) -> None:
    filepath = str(filepath)
    directory = osp.dirname(osp.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f'.{osp.basename(filepath)}.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


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
    _patch_checkpoint_loading()
    _patch_atomic_local_writes()
    _patch_config_package_scopes()
    warnings.filterwarnings(
        'ignore', message='.*torch.meshgrid.*indexing.*', category=UserWarning)
    _APPLIED = True
