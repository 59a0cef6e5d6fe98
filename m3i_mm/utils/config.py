"""Checks of a whole config, and of its command-line options, before it is
run."""
import difflib
import inspect
import warnings
from typing import Any, Dict, Iterable, List

from mmengine.config import Config, DictAction


# Top-level keys read by mmengine's Runner besides its ``__init__``
# arguments (``Runner.from_cfg``, ``wrap_model``, ``build_optim_wrapper``,
# ``setup_env``), by the OpenMMLab tools, and by m3i_mm (``load_strict``,
# see :meth:`m3i_mm.engine.M3IRunner.load_checkpoint`).
EXTRA_TOP_LEVEL_KEYS = (
    'activation_checkpointing', 'compile', 'custom_imports',
    'efficient_conv_bn_eval', 'find_unused_parameters', 'launcher',
    'load_strict', 'model_wrapper_cfg', 'runner_type', 'tta_model',
    'tta_pipeline')


def close_matches(value: str, known: Iterable[str],
                  cutoff: float = 0.6) -> str:
    """`` (did you mean 'a', 'b'?)`` for the known names close to ``value``
    (``difflib`` ratio >= ``cutoff``), else an empty string."""
    found = difflib.get_close_matches(
        value, sorted(set(known)), n=3, cutoff=cutoff)
    return f' (did you mean {", ".join(map(repr, found))}?)' if found else ''


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
    """Warn (``UserWarning``) about each misspelt top-level key, naming it
    and the closest known key: it would be silently ignored."""
    for key, hint in misspelt_top_level_keys(cfg).items():
        warnings.warn(f'config key {key!r} is not read by anything and is '
                      f'ignored{hint}', stacklevel=2)


def shorten_iter_schedule(cfg: Config, iters: int) -> None:
    """Cut an iteration-based schedule to ``iters``, keeping its shape.

    Sets ``train_cfg.max_iters`` (and ``val_interval``), the checkpoint
    interval, drops the schedulers that start at or after ``iters`` and ends
    the others by ``iters``. In place.

    Args:
        cfg (Config): A config with an ``IterBasedTrainLoop``.
        iters (int): New number of iterations, >= 1.

    Raises:
        ValueError: If ``iters`` < 1.
    """
    if iters < 1:
        raise ValueError(f'iters must be >= 1, got {iters}')
    cfg.train_cfg.max_iters = iters
    if 'val_interval' in cfg.train_cfg:
        cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters
    schedulers = [s for s in cfg.param_scheduler if s.get('begin', 0) < iters]
    for scheduler in schedulers:
        scheduler['end'] = min(scheduler.get('end', iters), iters)
    cfg.param_scheduler = schedulers


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` (``--cfg-options KEY=VALUE ...``) that
    refuses an item without ``=`` naming it (mmengine 0.10.x raised
    ``not enough values to unpack``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values or ():
            if '=' not in item:
                parser.error(f'{option_string} {item!r}: expected KEY=VALUE, '
                             f'e.g. train_cfg.max_iters=10')
        super().__call__(parser, namespace, values, option_string)


_MISSING = object()


def _config_value(cfg: Config, key: str) -> Any:
    """The value at dotted ``key`` (list items by index), or ``_MISSING``."""
    node: Any = cfg
    for part in key.split('.'):
        if hasattr(node, 'keys') and part in node.keys():  # Config, dicts
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and \
                int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, (int, float)):
        return 'number'
    return 'other'


def check_option_values(cfg: Config, options: Dict[str, Any]) -> None:
    """Refuse a ``--cfg-options`` value that cannot replace the config's:
    text where the config has a number or a bool, a number where it has a
    bool, and so on. ``DictAction`` turns ``1e-3`` into a float but keeps
    ``1e-3x`` as text, which failed far later (a ``TypeError`` inside the
    optimizer). ``None`` and new keys are not checked.

    Args:
        cfg (Config): The config before the options are merged.
        options (dict): Parsed ``--cfg-options``.

    Raises:
        ValueError: Naming the option, its value and the config's value.
    """
    for key, value in options.items():
        old = _config_value(cfg, key)
        if old is _MISSING or value is None:
            continue
        if _kind(old) != 'other' and _kind(value) != _kind(old):
            raise ValueError(
                f'--cfg-options {key}={value!r}: the config has {old!r} '
                f'there, so it takes a {_kind(old)}, not '
                f'{type(value).__name__} {value!r}')
