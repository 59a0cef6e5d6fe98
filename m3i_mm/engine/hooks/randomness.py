"""Random draws of training as pure functions of (seed, rank, position).

mmengine neither checkpoints generator states nor gives a data worker the
state it would have had in an uninterrupted run (onedl-mmengine 0.10.12
fast-forwards the sampler and starts fresh workers; mmengine 0.10.7 replays
the batches in fresh workers). Rather than saving and restoring the states of
the main process and of every worker of every rank, which would also have to
follow each worker's prefetch, every draw is seeded from where it happens,
see :mod:`m3i_mm.utils.randomness`.
"""
from typing import Iterator, Optional, Sized

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop
from torch.utils.data import BatchSampler, IterableDataset, Sampler

from m3i_mm.engine.dataloader import SeededDataset
from m3i_mm.registry import HOOKS
from m3i_mm.utils.randomness import (MAIN_PROCESS, SAMPLE, SeededIndex,
                                     derive_seed, seed_all)


class SeededSampler(Sampler):
    """Wrap a sampler so that each index carries the seed of its sample.

    The ``k``-th index of a pass (``k`` counted from the start of the pass in
    this rank's stream, including skipped ones) becomes
    ``SeededIndex(index, derive_seed(seed, SAMPLE, rank, epoch, k))``, where
    ``epoch`` is the wrapped sampler's ``epoch`` (0 for samplers without
    one, e.g. mmengine's ``InfiniteSampler``, whose one pass is endless).
    Samples hence get the same augmentations whichever worker loads them and
    however the run was interrupted. Non-integer indices (``None`` of an
    iterable dataset) pass through.

    ``set_epoch`` is forwarded to the wrapped sampler and to the dataset: an
    iterable dataset (:class:`m3i_mm.datasets.ImageTextShards`,
    :class:`m3i_mm.datasets.MultiSourceDataset`) thus learns the epoch in the
    main process, before the workers copy it.

    Args:
        sampler (Sampler): The sampler to wrap.
        dataset (Sized, optional): The dataloader's dataset.
        seed (int): Seed of the run.
        rank (int): Rank of this process.
        start (int): Position of the first index of the first pass: the
            number of indices the wrapped sampler was fast-forwarded by.
    """

    def __init__(self,
                 sampler: Sampler,
                 dataset: Optional[Sized] = None,
                 seed: int = 0,
                 rank: int = 0,
                 start: int = 0) -> None:
        self.sampler = sampler
        self.dataset = dataset
        self.seed = seed
        self.rank = rank
        self.start = start
        self._skip = 0

    def leave_out(self, num: int) -> None:
        """Leave out the first ``num`` indices of the next pass (their
        positions still count): a mid-epoch resume
        (:class:`m3i_mm.engine.ResumableEpochBasedTrainLoop`). Not named
        ``skip``: onedl-mmengine's ``IterBasedTrainLoop`` fast-forwards any
        sampler with a ``skip`` method (``InfiniteSampler``'s contract), and
        this one forwards nothing to the wrapped sampler."""
        self._skip = num

    def __iter__(self) -> Iterator:
        epoch = getattr(self.sampler, 'epoch', 0)
        start, self.start = self.start, 0
        skip, self._skip = self._skip, 0
        for position, index in enumerate(self.sampler, start):
            if position < start + skip:
                continue
            if isinstance(index, int):
                index = SeededIndex(
                    index,
                    derive_seed(self.seed, SAMPLE, self.rank, epoch,
                                position))
            yield index

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        for target in (self.sampler, self.dataset):
            if hasattr(target, 'set_epoch'):
                target.set_epoch(epoch)


@HOOKS.register_module()
class ResumableRandomnessHook(Hook):
    """Make a resumed run draw the random numbers of the uninterrupted one.

    - Main process: before each training iteration ``i``, python ``random``,
      numpy and torch (CPU and CUDA) are seeded with
      ``derive_seed(seed, MAIN_PROCESS, rank, i)``; the mixing permutations,
      drop-path and anything else drawn during the iteration depend on
      ``(seed, rank, i)`` only (validation and dataloader restarts in between
      do not shift them).
    - Data: the train dataloader's sampler is wrapped in
      :class:`SeededSampler`, whose seeds :class:`m3i_mm.engine.SeededDataset`
      (``M3IRunner`` wraps a map-style train dataset in it) sets before
      loading each sample; the streaming datasets seed their samples
      themselves from their epoch and stream position, and get their epoch
      through :meth:`SeededSampler.set_epoch`.

    The state this needs is the run's seed and the loop's epoch and
    iteration, all in mmengine's checkpoint ``meta`` (mmengine re-applies
    the checkpoint's seed on resume). Only the standard ``BatchSampler`` is
    wrapped; a custom batch sampler keeps mmengine's per-worker seeding.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        loader = runner.train_loop.dataloader
        batch_sampler = getattr(loader, 'batch_sampler', None)
        if type(batch_sampler) is not BatchSampler or isinstance(
                batch_sampler.sampler, SeededSampler):
            return
        batch_sampler.sampler = SeededSampler(
            batch_sampler.sampler,
            dataset=loader.dataset,
            seed=runner.seed,
            rank=get_rank(),
            start=self._fast_forwarded(runner, loader))
        if not isinstance(loader.dataset, (SeededDataset, IterableDataset)):
            runner.logger.warning(
                'The train samples are not seeded from their position: '
                "their dataset is no SeededDataset (runner_type='M3IRunner' "
                'wraps it).')

    @staticmethod
    def _fast_forwarded(runner, loader) -> int:
        """Indices mmengine's loop will skip at the sampler (not by loading
        the batches) when resuming: ``iter * batch_size`` where the sampler
        has ``skip`` (onedl-mmengine 0.10.12), else 0."""
        loop = runner.train_loop
        if (not isinstance(loop, IterBasedTrainLoop) or runner.iter == 0
                or getattr(loop, 'fast_forward_on_resume', False)
                or not hasattr(loader.sampler, 'skip')):
            return 0
        return runner.iter * loader.batch_size

    def before_train_iter(self,
                          runner,
                          batch_idx: int,
                          data_batch: Optional[dict] = None) -> None:
        seed_all(derive_seed(runner.seed, MAIN_PROCESS, get_rank(),
                             runner.iter))
