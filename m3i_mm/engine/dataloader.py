"""Data loading of :class:`m3i_mm.engine.M3IRunner`: worker lifetime and
per-sample seeds."""
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Union

from torch.utils.data import DataLoader, Dataset

from m3i_mm.datasets.non_empty import build_dataset
from m3i_mm.utils.randomness import SeededIndex, seed_all

__all__ = ['ExitWithParent', 'SeededDataset', 'stop_workers']


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

    PyTorch's workers (torch 2.x) only notice a dead parent while waiting for
    work; a worker blocked on a full result queue, as persistent workers of
    a killed trainer are, lives on forever. On Linux the kernel kills the
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


def stop_workers(loader: DataLoader) -> bool:
    """Stop the worker processes and the pin-memory thread that a loader
    with ``persistent_workers=True`` keeps between epochs, now.

    torch (2.x) stops them only when its iterator is collected or from an
    ``atexit`` handler, after the run is over and in whatever order the
    interpreter tears down (with ``pin_memory=True`` a trainer hung there
    on a GPU, issue 19). The next ``iter(loader)`` starts new workers.

    Args:
        loader (DataLoader): Any loader; without live workers nothing
            happens.

    Returns:
        bool: Whether workers were stopped.
    """
    # torch keeps the persistent workers' iterator in ``_iterator``.
    iterator = getattr(loader, '_iterator', None)
    shutdown = getattr(iterator, '_shutdown_workers', None)
    if shutdown is None:
        return False
    loader._iterator = None
    shutdown()
    return True


class SeededDataset(Dataset):
    """A map-style dataset that seeds each sample's transforms from its index.

    mmengine (0.10.x) seeds a data worker once, so the random transforms of
    a sample depend on which worker loads it and on what it loaded before.
    For a :class:`m3i_mm.utils.randomness.SeededIndex` (yielded by
    :class:`m3i_mm.engine.hooks.SeededSampler`) python ``random``, numpy and
    torch are seeded with the index's seed right before
    ``dataset[index]``, in whichever worker loads it; plain indices are
    loaded as they are. Every other attribute (``metainfo``, a wrapper's
    ``dataset``, ...) is the dataset's, to get and to set.

    Args:
        dataset (Dataset | dict): The map-style dataset to wrap, or its
            config.
    """

    def __init__(self, dataset: Union[Dataset, dict]) -> None:
        if isinstance(dataset, dict):
            dataset = build_dataset(dataset)
        # Not ``dataset``: wrappers (ClassBalancedDataset, ...) have their
        # own ``dataset``, which stays reachable through this one.
        object.__setattr__(self, '_inner', dataset)

    def __getitem__(self, index: int) -> Any:
        if isinstance(index, SeededIndex):
            seed_all(index.seed)
        return self._inner[index]

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        # Not dunders (torch looks for ``__getitems__``, which would bypass
        # the seeding), nor ``_inner`` itself while unpickling.
        if name.startswith('__') or name == '_inner':
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # e.g. mmdet's PipelineSwitchHook sets ``dataset.pipeline``.
        setattr(self._inner, name, value)
