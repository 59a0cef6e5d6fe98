"""Checks of a whole config before it is run."""
import inspect
import warnings
from typing import Dict, List

from mmengine.config import Config

from m3i_mm.compat import close_matches

# Top-level keys read by mmengine's Runner besides its ``__init__``
# arguments (``Runner.from_cfg``, ``wrap_model``, ``build_optim_wrapper``,
# ``setup_env``), by the OpenMMLab tools, and by m3i_mm (``load_strict``,
# see :func:`m3i_mm.compat._patch_strict_load_from`).
EXTRA_TOP_LEVEL_KEYS = (
    'activation_checkpointing', 'compile', 'custom_imports',
    'efficient_conv_bn_eval', 'find_unused_parameters', 'launcher',
    'load_strict', 'model_wrapper_cfg', 'runner_type', 'tta_model',
    'tta_pipeline')


def known_top_level_keys() -> List[str]:
    """Every top-level config key something reads.

    Returns:
        list[str]: ``Runner.__init__``'s arguments (without ``cfg``) and
        :data:`EXTRA_TOP_LEVEL_KEYS`.
    """
    from mmengine.runner import Runner
    params = inspect.signature(Runner.__init__).parameters
    return sorted({n for n in params if n not in ('self', 'cfg')} |
                  set(EXTRA_TOP_LEVEL_KEYS))


def misspelt_top_level_keys(cfg: Config) -> Dict[str, str]:
    """Top-level keys nothing reads that are close to a known key.

    Other unknown keys are the helper variables configs define (``data_root``,
    ``norm_cfg``, ...) and are not reported, nor are ``*_pipeline`` helpers
    (close to ``tta_pipeline``). Close means a ``difflib`` ratio of at least
    0.85: ``train_dataloaders``, ``optim_wraper``, ``load_form`` are
    reported, none of the helper variables of our configs is.

    Args:
        cfg (Config): The config, after ``--cfg-options``.

    Returns:
        dict: ``{key: " (did you mean 'known'?)"}``.
    """
    known = known_top_level_keys()
    found = {}
    for key in cfg.keys():
        if key in known or key.endswith('_pipeline'):
            continue
        hint = close_matches(key, known, cutoff=0.85)
        if hint:
            found[key] = hint
    return found


def warn_misspelt_keys(cfg: Config) -> None:
    """Warn (``UserWarning``) about each key of :func:`misspelt_top_level_keys`,
    naming it: it would be silently ignored."""
    for key, hint in misspelt_top_level_keys(cfg).items():
        warnings.warn(f'config key {key!r} is not read by anything and is '
                      f'ignored{hint}', stacklevel=2)
