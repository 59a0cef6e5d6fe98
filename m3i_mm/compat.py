"""Every fix m3i_mm applies to upstream code, in one place.

Applied once by ``import m3i_mm``. Each patch names the upstream versions it
is for and is written so that it is a no-op where the upstream code is fine.
Tested on the pinned stack of ``requirements/env.txt`` (the OneDL line:
onedl-mmengine 0.10.12, onedl-mmcv 2.3.6, onedl-mmdetection 3.5.1,
onedl-mmsegmentation 1.4.2, onedl-mmpretrain 1.3.6, torch 2.13, numpy 2) and
written to keep the upstream line (mmengine 0.10.7, mmcv 2.1, mmdet 3.3,
mmseg 1.2.2, mmpretrain 1.2.0) working where a shim is enough.
"""
import difflib
import functools
import importlib
import io
import os
import os.path as osp
import pickle
import re
import tempfile
import warnings
from typing import Any, Callable, Iterable, List, Optional, Union

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


def close_matches(value: str, known: Iterable[str],
                  cutoff: float = 0.6) -> str:
    """`` (did you mean 'a', 'b'?)`` for the known names close to ``value``
    (``difflib`` ratio >= ``cutoff``), else an empty string."""
    found = difflib.get_close_matches(
        value, sorted(set(known)), n=3, cutoff=cutoff)
    return f' (did you mean {", ".join(map(repr, found))}?)' if found else ''


def _name_file_on_error(method: Callable, path_key: str) -> Callable:
    """Wrap a loading method ``(self, results)`` so that its errors name the
    file ``results[path_key]`` (and say when it is empty)."""

    @functools.wraps(method)
    def wrapper(self, results: dict, *args, **kwargs):
        try:
            return method(self, results, *args, **kwargs)
        except Exception as err:
            path = results.get(path_key)
            if path is None or str(path) in str(err):
                raise
            empty = osp.isfile(path) and osp.getsize(path) == 0
            what = 'the file is empty (0 bytes)' if empty else (
                f'{type(err).__name__}: {err}')
            raise ValueError(f'{type(self).__name__} cannot read '
                             f'{path_key} {path}: {what}') from err

    wrapper._m3i_names_file = True
    return wrapper


def _patch_file_loading_errors() -> None:
    """mmcv 2.1-2.3.6, mmdet 3.3-3.5.1, mmseg 1.2-1.4.2: errors of image and
    segmentation-map loading do not name the file.

    A zero-byte image raised cv2's ``(-215:Assertion failed) !buf.empty()``
    from ``LoadImageFromFile``; the same from every ``LoadAnnotations``
    for a zero-byte map. We re-raise such errors as ``ValueError`` naming the
    file (errors that already name it, e.g. a missing file, pass unchanged).
    """
    from mmcv.transforms import loading
    targets = [(loading.LoadImageFromFile, 'transform', 'img_path'),
               (loading.LoadAnnotations, '_load_seg_map', 'seg_map_path')]
    for module in ('mmdet.datasets.transforms.loading',
                   'mmseg.datasets.transforms.loading'):
        try:
            cls = importlib.import_module(module).LoadAnnotations
        except Exception:  # optional downstream packages
            continue
        targets.append((cls, '_load_seg_map', 'seg_map_path'))
    for cls, name, key in targets:
        method = cls.__dict__.get(name)
        if method is not None and not hasattr(method, '_m3i_names_file'):
            setattr(cls, name, _name_file_on_error(method, key))


def _patch_empty_dataset_error() -> None:
    """mmengine (all 0.10.x): an empty dataset fails with numpy's ``need at
    least one array to concatenate`` (``BaseDataset._serialize_data``), or
    later in the sampler, naming nothing. We raise naming the dataset's
    annotation file, root, prefix and filter."""
    from mmengine.dataset import BaseDataset

    def check(dataset) -> None:
        if len(dataset.data_list) == 0:
            raise ValueError(
                f'{type(dataset).__name__} has no samples: ann_file='
                f'{dataset.ann_file!r}, data_root={dataset.data_root!r}, '
                f'data_prefix={dict(dataset.data_prefix)}, filter_cfg='
                f'{dataset.filter_cfg}, indices={dataset._indices}')

    serialize, full_init = BaseDataset._serialize_data, BaseDataset.full_init
    if hasattr(full_init, '_m3i_checks_empty'):
        return

    def _serialize_data(self):
        check(self)
        return serialize(self)

    def checked_full_init(self) -> None:
        full_init(self)
        if not self.serialize_data:
            check(self)

    checked_full_init._m3i_checks_empty = True
    BaseDataset._serialize_data = _serialize_data
    BaseDataset.full_init = functools.wraps(full_init)(checked_full_init)


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


def _patch_accuracy_ties() -> None:
    """mmpretrain 1.2.0 / onedl-mmpretrain 1.3.6 ``Accuracy.calculate``:
    tied scores count as correct when ``topk`` happens to put the true class
    first (constant scores give the share of the lowest class index, not
    0), and a NaN score of the true class can count as correct.

    For scores ``(N, C)`` we rank pessimistically: sample ``i`` is correct at
    ``k`` iff fewer than ``k`` other classes score at least as high as its
    true class (NaN scores rank above everything; a NaN true score is
    wrong), and, as upstream, its true score is above the threshold. Without
    ties or NaN this equals upstream. Labels ``(N,)`` are unchanged.
    """
    try:
        from mmpretrain.evaluation.metrics import Accuracy
        from mmpretrain.evaluation.metrics.single_label import to_tensor
    except ImportError:
        return
    calculate = Accuracy.calculate
    if hasattr(calculate, '_m3i_ties'):
        return

    def pessimistic(pred, target, topk=(1, ), thrs=(0., )):
        scores = to_tensor(pred)
        if scores.ndim == 1 or max(topk) > scores.size(1):
            return calculate(pred, target, topk, thrs)  # its errors
        scores = scores.float()
        target = to_tensor(target).to(torch.int64)
        if scores.size(0) != target.size(0):
            return calculate(pred, target, topk, thrs)
        true = scores.gather(1, target.view(-1, 1))
        rank = ((scores >= true) | scores.isnan()).sum(1) - 1
        true = true.view(-1)
        rank[true.isnan()] = scores.size(1)
        results = []
        for k in topk:
            row = []
            for thr in thrs:
                hit = rank < k
                if thr is not None:
                    hit &= true > thr
                row.append(hit.float().sum(0, keepdim=True).mul_(
                    100. / scores.size(0)))
            results.append(row)
        return results

    pessimistic._m3i_ties = True
    Accuracy.calculate = staticmethod(functools.wraps(calculate)(pessimistic))


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
    _patch_file_loading_errors()
    _patch_empty_dataset_error()
    _patch_optimizer_type_check()
    _patch_strict_load_from()
    _patch_accuracy_ties()
    warnings.filterwarnings(
        'ignore', message='.*torch.meshgrid.*indexing.*', category=UserWarning)
    _APPLIED = True
