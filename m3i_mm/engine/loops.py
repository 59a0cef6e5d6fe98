"""An epoch-based train loop that resumes in the middle of an epoch."""
import itertools

from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop

from m3i_mm.engine.hooks.randomness import SeededSampler

__all__ = ['ResumableEpochBasedTrainLoop']


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` that continues a checkpoint saved
    in the middle of an epoch where it was saved.

    ``EpochBasedTrainLoop`` (onedl-mmengine 0.10.12, mmengine 0.10.7)
    restarts the checkpoint's epoch from its first batch, so an iteration
    checkpoint (``DurableCheckpointHook(last_interval=N)``, a preemption)
    would repeat the epoch's first part and run past ``max_iters``. Here the
    first epoch after such a resume leaves out the batches already trained
    on: at the sampler when :class:`SeededSampler` wraps it
    (``ResumableRandomnessHook``; nothing is loaded and every later sample
    gets the seed it had in the uninterrupted run), else by loading and
    dropping them. Arguments are those of ``EpochBasedTrainLoop``.
    """

    def run_epoch(self) -> None:
        # done == len: saved after the epoch's last iteration, before its
        # after_train_epoch hooks (a preemption); they run now.
        done = self._iter - self._epoch * len(self.dataloader)
        if not 0 < done <= len(self.dataloader):
            return super().run_epoch()
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        sampler = getattr(self.dataloader.batch_sampler, 'sampler', None)
        if isinstance(sampler, SeededSampler):
            sampler.leave_out(done * self.dataloader.batch_size)
            batches = enumerate(self.dataloader, done)
        else:
            batches = itertools.islice(enumerate(self.dataloader), done, None)
        self.runner.logger.info(
            f'Resuming epoch {self._epoch + 1} after its batch {done}.')
        for idx, data_batch in batches:
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
