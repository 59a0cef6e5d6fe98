"""Save a checkpoint and exit when the scheduler announces the end.

Slurm (and most schedulers) send SIGTERM some seconds before SIGKILL, and
on request a chosen signal minutes before the time limit
(``srun --signal=USR1@180``). mmengine (onedl-mmengine 0.10.12, mmengine
0.10.7) installs no handler: the trainer dies at once (exit code 143) and
loses every iteration since the last periodic checkpoint.
"""
import os.path as osp
import signal
import threading
from typing import Dict, Optional, Sequence, Union

import torch
from mmengine.dist import all_reduce, barrier, is_distributed, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import EpochBasedTrainLoop

from m3i_mm.engine.checkpoint.durable import _atomic_write
from m3i_mm.registry import HOOKS

__all__ = ['PREEMPTED_EXIT_CODE', 'PreemptionHook']

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to
# retry": tools/slurm_train.sh requeues the job on it.
PREEMPTED_EXIT_CODE = 75


def _signal(value: Union[str, int]) -> signal.Signals:
    if isinstance(value, str):
        name = value.upper()
        return signal.Signals[name if name.startswith('SIG') else
                              f'SIG{name}']
    return signal.Signals(value)


@HOOKS.register_module()
class PreemptionHook(Hook):
    """On SIGTERM or another chosen signal, finish the current iteration,
    save a checkpoint, log it and exit with :data:`PREEMPTED_EXIT_CODE`.

    The handler only records the signal; after each training iteration the
    ranks agree on it (an all-reduce of one flag, ``max``, in a distributed
    run), so every rank saves at the same iteration, through the run's
    checkpoint hook (:class:`DurableCheckpointHook`: atomic, rotation
    after the save) unless that hook has just saved this iteration; with an
    epoch-based checkpoint hook (or none), as ``iter_N.pth`` in its
    ``out_dir``, named by ``last_checkpoint``. Further signals during the
    save are recorded and ignored: the save completes. After a barrier (no
    rank exits, and is killed by the launcher, while rank 0 still writes)
    the trainer raises ``SystemExit(exit_code)``; ``--resume`` continues
    exactly there.

    :class:`ResumableEpochBasedTrainLoop` continues a checkpoint of the
    middle of an epoch there; mmengine's ``EpochBasedTrainLoop`` has no
    mid-epoch resume and repeats the epoch from its start (said in the
    log).

    Args:
        signals (Sequence[str | int]): Signals that preempt, by name
            (``'SIGTERM'``, ``'USR1'``) or number.
            Defaults to ``('SIGTERM', 'SIGUSR1')``.
        exit_code (int): The trainer's exit code after the save.
            Defaults to :data:`PREEMPTED_EXIT_CODE` (75).
    """

    priority = 'LOWEST'  # after the checkpoint and logger hooks

    def __init__(self,
                 signals: Sequence[Union[str, int]] = ('SIGTERM', 'SIGUSR1'),
                 exit_code: int = PREEMPTED_EXIT_CODE) -> None:
        self.signals = [_signal(s) for s in signals]
        self.exit_code = exit_code
        self.received: Optional[signal.Signals] = None
        self._previous: Dict[signal.Signals, object] = {}

    def _record(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def before_train(self, runner) -> None:
        if threading.current_thread() is not threading.main_thread():
            runner.logger.warning('PreemptionHook: training runs outside the '
                                  'main thread, no signal handler installed.')
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._record)

    def after_train(self, runner) -> None:
        self.restore_signal_handlers()

    def restore_signal_handlers(self) -> None:
        """Put back the handlers found in ``before_train`` (also called by
        :meth:`M3IRunner.train` when training fails: no hook runs then)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        flag = torch.tensor([0 if self.received is None else 1])
        if is_distributed():
            all_reduce(flag, op='max')
        if not flag.item():
            return
        what = self.received.name if self.received else 'another rank'
        step = runner.iter + 1
        hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)),
                    None)
        if hook is not None and not hook.by_epoch:
            path = hook.file_backend.join_path(hook.out_dir,
                                               hook.filename_tmpl.format(step))
            if getattr(hook, 'last_ckpt', None) != path:  # not saved yet
                runner.logger.info(f'{what}: saving checkpoint at {step} '
                                   'iterations')
                hook._save_checkpoint(runner)
        elif hasattr(hook, 'save_iteration_checkpoint'):  # mid-epoch
            runner.logger.info(f'{what}: saving checkpoint at {step} '
                               'iterations')
            path = hook.save_iteration_checkpoint(runner)
        else:  # mmengine's epoch-based hook, or none
            out_dir = hook.out_dir if hook else runner.work_dir
            path = osp.join(out_dir, f'iter_{step}.pth')
            runner.logger.info(f'{what}: saving checkpoint at {step} '
                               'iterations')
            runner.save_checkpoint(
                out_dir, f'iter_{step}.pth', by_epoch=False,
                backend_args=hook.backend_args if hook else None)
            if is_main_process():
                _atomic_write(path, osp.join(runner.work_dir,
                                             'last_checkpoint'), 'w')
        if is_distributed():
            barrier()
        epoch_note = (' (mmengine\'s EpochBasedTrainLoop: --resume repeats '
                      f'epoch {runner.epoch + 1} from its start)'
                      if type(runner.train_loop) is EpochBasedTrainLoop
                      else '')
        runner.logger.info(
            f'Preempted by {what} after iteration {step}: checkpoint {path}'
            f'{epoch_note}; exiting with code {self.exit_code}. Continue '
            'with --resume.')
        raise SystemExit(self.exit_code)
