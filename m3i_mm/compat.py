"""Every fix m3i_mm applies to upstream code, in one place.

Applied once by ``import m3i_mm``. Each patch names the upstream versions it
is for and is written so that it is a no-op where the upstream code is fine.
Tested on the pinned stack of ``requirements/env.txt`` (the OneDL line:
onedl-mmengine 0.10.12, onedl-mmcv 2.3.6, onedl-mmdetection 3.5.1,
onedl-mmsegmentation 1.4.2, onedl-mmpretrain 1.3.6, torch 2.13, numpy 2) and
written to keep the upstream line (mmengine 0.10.7, mmcv 2.1, mmdet 3.3,
mmseg 1.2.2, mmpretrain 1.2.0) working where a shim is enough.

Features of the run (durable checkpoints, resume, strict ``load_from``, data
loading, CPU launching and AMP) are not patched in: they come through
mmengine's extension points in :mod:`m3i_mm.engine` (``M3IRunner``,
``DurableCheckpointHook``, ``CPUAwareAmpOptimWrapper``).
"""
import contextlib
import difflib
import functools
import importlib
import io
import logging
import os
import os.path as osp
import pickle
import re
import warnings
from typing import Any, Callable, Iterable, Iterator, List, Tuple, Union

import numpy as np
import torch

_APPLIED = False

# Environment variable that lets a user load a checkpoint they trust with
# full pickle (``weights_only=False``). Never set by m3i_mm itself.
TRUST_ENV = 'M3I_TRUST_CHECKPOINTS'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds a pickled object outside the allow-list."""


# numpy 2 renamed ``numpy.core`` to ``numpy._core``: a checkpoint names the
# module of the numpy that wrote it, so both spellings map to the same object.
_NUMPY_MULTIARRAY_NAMES = ('numpy.core.multiarray', 'numpy._core.multiarray')

# What a legitimate ``HistoryBuffer`` (mmengine's message hub) holds.
_HISTORY_BUFFER_ATTRS = {'max_length', '_log_history', '_count_history'}
# What torch's unpickler may set on an ``OrderedDict`` (``state_dict()``).
_ORDERED_DICT_ATTRS = {'_metadata'}


def _numpy_multiarray():
    return (getattr(np, '_core', None) or np.core).multiarray


def _safe_numpy_dtype_classes() -> List[type]:
    """numpy >= 1.25 gives each dtype its class (``numpy.dtypes.Int16DType``);
    a pickled dtype is built through it. Every kind but object (``O``: holds
    arbitrary Python objects) and void (``V``: structured records)."""
    kinds = np.typecodes['All'].replace('O', '').replace('V', '')
    classes = {type(np.dtype(code)) for code in kinds}
    classes.discard(np.dtype)  # numpy < 1.25: one class, allowed below
    return sorted(classes, key=lambda cls: cls.__name__)


# ``HistoryBuffer.__getstate__`` (mmengine 0.10.x) pickles its class-level
# table of statistics methods; protocol 2 writes each method as
# ``getattr(HistoryBuffer, name)`` (a nested qualified name).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _restricted_getattr(obj: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while a checkpoint is unpickled.

    A free ``getattr`` gives a pickle every attribute of every object it can
    build: ``getattr(getattr, '__self__')`` is the ``builtins`` module, and
    torch's ``_rebuild_from_type_v2`` calls whatever it is given (``eval``).
    Checkpoints need exactly the four default statistics methods of
    mmengine's ``HistoryBuffer``; every other pair is refused.

    Raises:
        pickle.UnpicklingError: ``(obj, name)`` is not one of those pairs;
            the message names both.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: GLOBAL builtins.getattr({_describe(obj)}, '
        f'{name!r}): only HistoryBuffer.{{{",".join(_HISTORY_BUFFER_STATISTICS)}}} '
        f'may be looked up in a checkpoint')


def _describe(obj: Any) -> str:
    if obj is _restricted_getattr:
        return 'builtins.getattr'
    if isinstance(obj, type) or callable(obj):
        module = getattr(obj, '__module__', None) or type(obj).__module__
        qualname = getattr(obj, '__qualname__', None) or type(obj).__name__
        return f'{module}.{qualname}'
    return f'<{type(obj).__module__}.{type(obj).__qualname__} object>'


def checkpoint_safe_globals() -> List[Union[Any, Tuple[Any, str]]]:
    """Objects a training checkpoint may legitimately contain besides tensors.

    For ``torch.serialization.safe_globals``: mmengine's message hub
    (``HistoryBuffer`` holding numpy arrays and scalars) and numpy's pickling
    helpers under both of their module names (numpy 1.x and 2.x). ``getattr``
    is mapped to :func:`_restricted_getattr` (four ``HistoryBuffer``
    methods, nothing else), so an unpickled object can never reach a module,
    a function's globals or the builtins. Torch's own defaults (tensors,
    storages, rebuild helpers, ``OrderedDict``) are allowed by torch itself.

    Returns:
        list: Objects, and ``(object, 'module.name')`` pairs that map a name
        in the pickle to an object.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = _numpy_multiarray()
    allow: List[Union[Any, Tuple[Any, str]]] = [
        HistoryBuffer, slice, np.ndarray, np.dtype,
        (_restricted_getattr, 'builtins.getattr')
    ]
    for module in _NUMPY_MULTIARRAY_NAMES:
        allow.append((multiarray._reconstruct, f'{module}._reconstruct'))
        allow.append((multiarray.scalar, f'{module}.scalar'))
    return allow + _safe_numpy_dtype_classes()


def _refused_object(err: Exception) -> str:
    """The object torch's unpickler (or ours) refused, from its message."""
    text = str(err)
    patterns = (r'GLOBAL (builtins\.getattr\(.*?\))',
                r'GLOBAL ([\w.]+) (?:was not an allowed|whose module)',
                r'unrecognized function (.+?)(?: which belongs|$)',
                r"but got (<class '[\w.]+'>)")
    for pattern in patterns:
        found = re.search(pattern, text, flags=re.MULTILINE)
        if found:
            name = found.group(1)
            # torch 2.13 drops the ``builtins.`` of the names it reports.
            return name if '.' in name or '<' in name else f'builtins.{name}'
    detail = [line for line in text.splitlines() if 'error' in line.lower()]
    return (detail[-1] if detail else text.splitlines()[0]).strip()


def _check_loaded(obj: Any, name: str) -> None:
    """Refuse state that the unpickler built but a checkpoint never holds.

    torch's ``BUILD`` sets any attribute on an allow-listed instance
    (``OrderedDict``, ``HistoryBuffer``), which could shadow a method or a
    class-level table that mmengine later calls; numpy object arrays carry
    Python objects. Walks containers iteratively (no recursion limit).

    Raises:
        UnsafeCheckpointError: Names the file and the offending object.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    def refuse(what: str) -> None:
        raise UnsafeCheckpointError(
            f'Refusing to load checkpoint {name}: {what}. If you trust this '
            f'file, set {TRUST_ENV}=1.')

    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            extra = set(getattr(item, '__dict__', {})) - _ORDERED_DICT_ATTRS
            if extra:
                refuse(f'a {type(item).__name__} with attributes '
                       f'{sorted(extra)}')
            stack.extend(item.keys())
            stack.extend(item.values())
            stack.extend(getattr(item, '__dict__', {}).values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, HistoryBuffer):
            attrs = set(vars(item))
            if attrs != _HISTORY_BUFFER_ATTRS or not isinstance(
                    item.max_length, int):
                refuse(f'a HistoryBuffer with attributes {sorted(attrs)} '
                       f'(expected {sorted(_HISTORY_BUFFER_ATTRS)}, '
                       f'max_length an int)')
            stack.extend((item._log_history, item._count_history))
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            refuse(f'a numpy array of dtype {item.dtype} (Python objects)')


@contextlib.contextmanager
def _history_buffer_table_guarded(name: str) -> Iterator[None]:
    """Undo and refuse changes a checkpoint makes to ``HistoryBuffer``'s
    class-level table of statistics methods.

    ``HistoryBuffer.__setstate__`` (mmengine 0.10.x) merges the pickled
    table into the class attribute, i.e. into every buffer of the process.
    A checkpoint may only bring the four defaults, as themselves.

    Raises:
        UnsafeCheckpointError: Names the file and the entry.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    table = HistoryBuffer._statistics_methods
    before = dict(table)
    try:
        yield
    finally:
        allowed = dict(before)
        allowed.update((method, getattr(HistoryBuffer, method))
                       for method in _HISTORY_BUFFER_STATISTICS)
        changed = sorted(key for key, value in table.items()
                         if allowed.get(key, None) is not value)
        if changed:
            table.clear()
            table.update(before)
            raise UnsafeCheckpointError(
                f'Refusing to load checkpoint {name}: it replaces the '
                f'HistoryBuffer statistics methods {changed}. If you trust '
                f'this file, set {TRUST_ENV}=1.')


def safe_torch_load(file: Union[str, io.IOBase],
                    map_location: Any = None,
                    weights_only: Union[bool, None] = None) -> Any:
    """``torch.load`` with an allow-list; never silently unpickles anything.

    The allow-list (:func:`checkpoint_safe_globals`) is in force only during
    this call (``torch.serialization.safe_globals``); the rest of the
    process keeps torch's defaults.

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
            allow-list, or state a checkpoint never holds; the message names
            the file and the object.
        RuntimeError: The file is truncated or no torch checkpoint; the
            message names the file.
    """
    if weights_only is None:
        weights_only = os.environ.get(TRUST_ENV, '0') != '1'
    if not weights_only:
        return torch.load(file, map_location=map_location, weights_only=False)
    name = file if isinstance(file, (str, os.PathLike)) else repr(file)
    with torch.serialization.safe_globals(checkpoint_safe_globals()), \
            _history_buffer_table_guarded(name):
        try:
            loaded = torch.load(
                file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f'Refusing to load checkpoint {name}: it contains a pickled '
                f'object outside the allow-list ({_refused_object(err)}). '
                f'If you trust this file, set {TRUST_ENV}=1.') from None
        except (RuntimeError, EOFError, ValueError, TypeError,
                AttributeError, KeyError, IndexError) as err:
            raise RuntimeError(f'Could not read checkpoint {name} (truncated '
                               f'or not a torch checkpoint): '
                               f'{type(err).__name__}: {err}') from err
    _check_loaded(loaded, name)
    return loaded


def _patch_checkpoint_loading() -> None:
    """mmengine: allow-listed loading instead of full unpickling.

    - onedl-mmengine 0.10.12 ``_safe_torch_load`` (every loader of
      ``CheckpointLoader`` calls it) falls back to ``weights_only=False`` on
      any unpickling error, i.e. it would run arbitrary pickled code from an
      untrusted file, and allow-lists ``builtins.getattr``. We replace it.
    - mmengine 0.10.7 ``load_from_local`` calls ``torch.load`` with torch's
      default (``weights_only=True`` since torch 2.6), which fails on
      ``HistoryBuffer`` when resuming: local files go through our loader.
    Nothing is added to torch's process-wide allow-list.
    """
    from mmengine.runner import checkpoint as ckpt
    if hasattr(ckpt, '_safe_torch_load'):
        ckpt._safe_torch_load = safe_torch_load
        return

    def load_from_local(filename: str, map_location: Any = None) -> Any:
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return safe_torch_load(filename, map_location=map_location)

    ckpt.CheckpointLoader.register_scheme(prefixes='', force=True)(
        load_from_local)


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

    A shim, not an extension point: configs (and their ``_base_`` scopes)
    are resolved by ``Config.fromfile`` before any runner or registry is
    involved, and mmengine's lookup has no hook.
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
    _patch_config_package_scopes()
    _patch_file_loading_errors()
    _patch_empty_dataset_error()
    _patch_accuracy_ties()
    warnings.filterwarnings(
        'ignore', message='.*torch.meshgrid.*indexing.*', category=UserWarning)
    _APPLIED = True
