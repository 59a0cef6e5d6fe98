"""Every fix m3i_mm applies to upstream code, in one place.

Applied once by ``import m3i_mm``. Each patch names the upstream versions it
is for and is written so that it is a no-op where the upstream code is fine.
Tested on the pinned stack of ``requirements/env.txt`` (the OneDL line:
onedl-mmengine 0.10.12, onedl-mmcv 2.3.6, onedl-mmdetection 3.5.1,
onedl-mmsegmentation 1.4.2, onedl-mmpretrain 1.3.6, torch 2.13, numpy 2) and
written to keep the upstream line (mmengine 0.10.7, mmcv 2.1, mmdet 3.3,
mmseg 1.2.2, mmpretrain 1.2.0) working where a shim is enough.
"""
import io
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


def latest_checkpoint_file(work_dir: str) -> Union[str, None]:
    """The newest ``iter_N.pth`` (else ``epoch_N.pth``) in ``work_dir``.

    Returns:
        str | None: Its path, or None when there is none.
    """
    for prefix in ('iter_', 'epoch_'):
        found = [(int(m.group(1)), name) for name in os.listdir(work_dir)
                 for m in [re.fullmatch(prefix + r'(\d+)\.pth', name)] if m]
        if found:
            return osp.join(work_dir, max(found)[1])
    return None


def _patch_find_latest_checkpoint() -> None:
    """mmengine (all 0.10.x): ``--resume`` after a kill before the first
    ``last_checkpoint``.

    ``CheckpointHook`` writes ``iter_N.pth`` and then its name to
    ``last_checkpoint``; ``find_latest_checkpoint`` reads only the latter, so
    a job killed between the two writes of its first checkpoint restarts
    from iteration 0 (with a log line, no error). Without the record, the
    newest checkpoint file of the folder is taken.
    """
    from mmengine.runner import runner
    upstream = runner.find_latest_checkpoint
    if getattr(upstream, '_m3i_fallback', False):
        return

    def find_latest_checkpoint(path: str) -> Union[str, None]:
        recorded = upstream(path)
        if recorded is None and osp.isdir(path):
            return latest_checkpoint_file(path)
        return recorded

    find_latest_checkpoint._m3i_fallback = True
    runner.find_latest_checkpoint = find_latest_checkpoint


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
    _patch_config_package_scopes()
    _patch_seeded_fetch()
    _patch_find_latest_checkpoint()
    warnings.filterwarnings(
        'ignore', message='.*torch.meshgrid.*indexing.*', category=UserWarning)
    _APPLIED = True
