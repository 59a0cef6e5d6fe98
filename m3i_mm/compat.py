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
import functools
import logging
import warnings

import numpy as np

_APPLIED = False


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
    _patch_config_package_scopes()
    warnings.filterwarnings(
        'ignore', message='.*torch.meshgrid.*indexing.*', category=UserWarning)
    _APPLIED = True
