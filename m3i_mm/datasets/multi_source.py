"""Several pre-training sources in one stage, drawn at configurable ratios."""
import itertools
from typing import Iterator, List, Optional, Sequence

import numpy as np
from mmengine.dist import get_dist_info
from torch.utils.data import IterableDataset

from m3i_mm.registry import DATASETS
from m3i_mm.utils.randomness import derive_seed, seed_all
from .image_text import check_length, nominal_length, worker_slot


@DATASETS.register_module()
class MultiSourceDataset(IterableDataset):
    """A stream mixing image-category and image-text sources.

    Each draw picks a source with probability proportional to its ratio and
    yields that source's next sample. Map-style sources (e.g. ``ImageNet21k``)
    are walked in a fresh random order every pass, each worker of each rank
    taking its own share; iterable sources (e.g. ``ImageTextShards``) split
    their shards themselves and are restarted when exhausted. Every sample
    keeps the targets its source has (``gt_label`` or ``caption``), and M3I
    computes each global loss only for the images that have its target. Use
    with ``sampler=None``.

    The stream is a pure function of ``(seed, epoch, worker slot)``: the
    draws, the orders of the map-style sources, and the generators seeded
    before each draw from ``(seed, epoch, slot, k)`` for the ``k``-th
    sample's transforms; an iterable source is started at its epoch 0, 1, 2,
    ... on each restart. Workers iterate a copy, so the epoch is set in the
    main process with :meth:`set_epoch` (iterating in the main process or in
    persistent workers also advances it by one).

    With ``length`` a pass is a nominal epoch of ``length`` samples over all
    ranks: each rank yields ``length // world_size`` (its ``len()``), split
    over its dataloader workers, so mmengine's Runner gets
    ``len(train_dataloader)`` and epoch-based loops end. Without it the
    stream is endless and ``len()`` raises ``TypeError``.

    An iterable source that yields nothing in a whole pass for a worker
    (e.g. fewer shards than ``world_size * num_workers``) raises
    ``ValueError`` rather than being skipped: skipping would silently change
    the mixing ratios of that worker's batches.

    Args:
        sources (Sequence[dict]): Dataset configs (each with its pipeline).
        ratios (Sequence[float], optional): Relative sampling frequency of
            each source. Defaults to equal.
        seed (int): Seed of the source draws and orders.
        length (int, optional): Samples per epoch over all ranks.
    """

    def __init__(self,
                 sources: Sequence[dict],
                 ratios: Optional[Sequence[float]] = None,
                 seed: int = 0,
                 length: Optional[int] = None) -> None:
        super().__init__()
        self.length = check_length(length)
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

    def __repr__(self) -> str:
        names = ', '.join(type(s).__name__ for s in self.sources)
        return f'MultiSourceDataset({names})'

    def __len__(self) -> int:
        """Samples of one rank per pass (``length // world_size``)."""
        return nominal_length(self, self.length)

    def _worker_share(self, slot: int, slots: int) -> Optional[int]:
        """Samples worker ``slot`` of ``slots`` (all ranks) yields per pass:
        its part of the rank's ``length // world_size``; None: endless."""
        if self.length is None:
            return None
        world_size = get_dist_info()[1]
        workers, per_rank = slots // world_size, self.length // world_size
        return per_rank // workers + int(slot % workers < per_rank % workers)

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
                empty = True
                for sample in source:
                    empty = False
                    yield sample
                if empty:
                    shards = getattr(source, 'shards', None)
                    raise ValueError(
                        f'{source!r} yielded no sample in a whole pass for '
                        f'worker slot {slot} of {slots} (world_size x '
                        'num_workers)' + ('' if shards is None else
                                          f'; it has {len(shards)} shards '
                                          f'for {slots} worker slots: use '
                                          'fewer workers or more shards'))
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
        share = self._worker_share(slot, slots)
        positions = itertools.count() if share is None else range(share)
        for position in positions:
            source = rng.choice(len(streams), p=self.probs)
            seed_all(derive_seed(self.seed, epoch, slot, position))
            yield next(streams[source])
