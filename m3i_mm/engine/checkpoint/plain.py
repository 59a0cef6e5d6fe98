"""Checkpoints that torch's default loader reads: the message hub as plain data.

mmengine (0.10.x) pickles its message hub as ``HistoryBuffer`` objects that
hold numpy arrays, so its checkpoints need an allow-list beyond torch's
``torch.load(weights_only=True)``. Before a checkpoint is saved,
:class:`PlainCheckpointHook` rewrites every ``HistoryBuffer`` and numpy value
in it as dicts of tensors (dtype kept, so a resume is exact); after one is
loaded it restores them. A checkpoint written by m3i_mm hence loads with
plain ``torch.load(path, weights_only=True)``; foreign mmengine checkpoints
still load through :mod:`m3i_mm.engine.checkpoint.parser`.
"""
import collections
from typing import Any, Callable, Dict

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer

from m3i_mm.registry import HOOKS

# Keys that mark a plain stand-in (no real checkpoint key looks like these).
HISTORY_BUFFER = '__history_buffer__'
NDARRAY = '__ndarray__'
NUMPY_SCALAR = '__numpy_scalar__'


def to_plain(value: Any) -> Any:
    """``value`` with each ``HistoryBuffer``, numeric numpy array and numpy
    scalar replaced by a tagged dict of tensors; dicts, lists and tuples are
    rebuilt, other values kept (tensors are not copied)."""
    if isinstance(value, HistoryBuffer):
        return {
            HISTORY_BUFFER: True,
            'max_length': int(value.max_length),
            'log_history': _tensor(value._log_history),
            'count_history': _tensor(value._count_history),
        }
    if isinstance(value, np.ndarray) and value.dtype.kind in 'biufc':
        return {NDARRAY: _tensor(value)}
    if isinstance(value, np.generic) and value.dtype.kind in 'biufc':
        return {NUMPY_SCALAR: _tensor(value)}
    return _map(value, to_plain)


def from_plain(value: Any) -> Any:
    """Undo :func:`to_plain`."""
    if isinstance(value, dict) and value.get(HISTORY_BUFFER) is True:
        return HistoryBuffer(value['log_history'].numpy(),
                             value['count_history'].numpy(),
                             value['max_length'])
    if isinstance(value, dict) and set(value) == {NDARRAY}:
        return value[NDARRAY].numpy()
    if isinstance(value, dict) and set(value) == {NUMPY_SCALAR}:
        return value[NUMPY_SCALAR].numpy()[()]
    return _map(value, from_plain)


def _tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(value))  # a copy, same dtype


def _map(value: Any, fn: Callable[[Any], Any]) -> Any:
    if type(value) in (dict, collections.OrderedDict):
        out = type(value)((key, fn(item)) for key, item in value.items())
        metadata = getattr(value, '_metadata', None)
        if metadata is not None:
            out._metadata = metadata
        return out
    if type(value) in (list, tuple):
        return type(value)(fn(item) for item in value)
    return value


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Save checkpoints as plain data, restore them on load (see module).

    Runs after every other hook when saving (``LOWEST``), so what other
    hooks add to a checkpoint is converted too.
    """

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        checkpoint.update(to_plain(dict(checkpoint)))

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        checkpoint.update(from_plain(dict(checkpoint)))
