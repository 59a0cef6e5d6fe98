"""Random numbers as pure functions of where they are drawn.

A resumed run must draw the same numbers as the uninterrupted one. Instead of
carrying generator states from process to process (main process, every data
worker, every rank), each consumer re-seeds the global generators (python
``random``, ``numpy.random``, torch CPU and CUDA) from a seed derived from the
run's seed and the position of the draw: the iteration in the main process,
the position of a sample in its rank's stream in the data workers. The state
to checkpoint is then the run's seed and the loop's counters, which mmengine's
checkpoint ``meta`` already holds.
"""
import random
from typing import Any, Tuple

import numpy as np
import torch

# Domains of derived seeds, so that the main process's seed of iteration ``i``
# and the seed of sample ``i`` differ.
MAIN_PROCESS = 0
SAMPLE = 1


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed, a hash of ``seed`` and ``keys`` (numpy's SeedSequence).

    Args:
        seed (int): Seed of the run, non-negative.
        *keys (int): Non-negative integers naming the draw (domain, rank,
            epoch, position, ...).

    Returns:
        int: In ``[0, 2**32)``; usable by ``random``, ``numpy`` and ``torch``.

    Raises:
        ValueError: A negative seed or key.
    """
    entropy = [int(seed), *map(int, keys)]
    if min(entropy) < 0:
        raise ValueError(f'seeds and keys must be non-negative, got {entropy}')
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed python ``random``, ``numpy.random`` and torch (CPU, every CUDA
    device) in this process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class SeededIndex(int):
    """A dataset index carrying the seed of the sample's random transforms.

    Yielded by :class:`m3i_mm.engine.hooks.SeededSampler`;
    :class:`m3i_mm.engine.SeededDataset` (around the train dataset of
    ``M3IRunner``) calls :func:`seed_all` with ``seed`` right before
    ``dataset[index]``, in whichever worker loads it.
    Behaves as the plain ``int`` everywhere else.
    """

    seed: int

    def __new__(cls, index: int, seed: int) -> 'SeededIndex':
        obj = super().__new__(cls, index)
        obj.seed = int(seed)
        return obj

    def __reduce__(self) -> Tuple[Any, Tuple[int, int]]:
        return SeededIndex, (int(self), self.seed)

    def __repr__(self) -> str:
        return f'SeededIndex({int(self)}, seed={self.seed})'


__all__ = [
    'MAIN_PROCESS', 'SAMPLE', 'SeededIndex', 'derive_seed', 'seed_all'
]
