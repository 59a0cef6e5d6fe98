"""Several pre-training sources in one stage, drawn at configurable ratios."""
import itertools
from typing import Iterator, List, Optional, Sequence

import numpy as np
from torch.utils.data import IterableDataset

from m3i_mm.registry import DATASETS
from m3i_mm.utils.randomness import derive_seed, seed_all
from .image_text import worker_slot


@DATASETS.register_module()
class MultiSourceDataset(IterableDataset):
    """An endless stream mixing image-category and image-text sources.

    Each draw picks a source with probability proportional to its ratio and
    yields that source's next sample. Map-style sources (e.g. ``ImageNet21k``)
    are walked in a fresh random order every pass, each worker of each rank
    taking its own share; iterable sources (e.g. ``ImageTextShards``) split
    their shards themselves and are restarted when exhausted. Every sample
    keeps the targets its source has (``gt_label`` or ``caption``), and M3I
    computes each global loss only for the images that have its target. Use
    with ``sampler=None`` and an iteration-based loop.

    The stream is a pure function of ``(seed, epoch, worker slot)``: the
    draws, the orders of the map-style sources, and the generators seeded
    before each draw from ``(seed, epoch, slot, k)`` for the ``k``-th
    sample's transforms; an iterable source is started at its epoch 0, 1, 2,
    ... on each restart. Workers iterate a copy, so the epoch is set in the
    main process with :meth:`set_epoch` (iterating in the main process or in
    persistent workers also advances it by one).

    Args:
        sources (Sequence[dict]): Dataset configs (each with its pipeline).
        ratios (Sequence[float], optional): Relative sampling frequency of
            each source. Defaults to equal.
        seed (int): Seed of the source draws and orders.
    """

    def __init__(self,
                 sources: Sequence[dict],
                 ratios: Optional[Sequence[float]] = None,
                 seed: int = 0) -> None:
        super().__init__()
        if not sources:
            raise ValueError('MultiSourceDataset needs at least one source')
        ratios = [1.0] * len(sources) if ratios is None else list(ratios)
        if len(ratios) != len(sources) or any(r < 0 for r in ratios) or \
                sum(ratios) <= 0:
            raise ValueError(f'ratios must be {len(sources)} non-negative '
                             f'numbers with a positive sum, got {ratios}')
        self.sources = [
            s if not isinstance(s, dict) else DATASETS.build(s)
            for s in sources
        ]
        self.probs = np.asarray(ratios, dtype=np.float64) / sum(ratios)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (draws, orders, seeds)."""
        self.epoch = int(epoch)

    @staticmethod
    def _stream(source, rng: np.random.Generator, slot: int,
                slots: int) -> Iterator[dict]:
        for restart in itertools.count():
            if isinstance(source, IterableDataset):
                if hasattr(source, 'set_epoch'):
                    source.set_epoch(restart)
                yield from source
                continue
            if len(source) < slots:
                raise ValueError(f'{type(source).__name__} has {len(source)} '
                                 f'samples, fewer than the {slots} workers')
            for index in rng.permutation(len(source))[slot::slots]:
                yield source[int(index)]

    def __iter__(self) -> Iterator[dict]:
        slot, slots = worker_slot()
        epoch = self.epoch
        self.epoch += 1
        rng = np.random.default_rng([self.seed, epoch, slot])
        streams: List[Iterator[dict]] = [
            self._stream(s, np.random.default_rng([self.seed, epoch, i]),
                         slot, slots) for i, s in enumerate(self.sources)
        ]
        for position in itertools.count():
            source = rng.choice(len(streams), p=self.probs)
            seed_all(derive_seed(self.seed, epoch, slot, position))
            yield next(streams[source])
