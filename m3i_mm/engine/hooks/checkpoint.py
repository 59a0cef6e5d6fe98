"""A checkpoint hook that never loses the last checkpoint."""
import os
import os.path as osp
import re
from typing import Any, List

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from m3i_mm.engine.checkpoint.durable import (_atomic_write,
                                              remove_stale_temp_files)


def _remove_checkpoint(backend: Any, path: str) -> None:
    if backend.isfile(path):
        backend.remove(path)
    elif backend.isdir(path):  # DeepSpeed checkpoints are folders
        backend.rmtree(path)


class _DeferredRemovals:
    """A file backend whose ``remove``/``rmtree`` only record the path."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.pending: List[str] = []

    def remove(self, path: str) -> None:
        self.pending.append(path)

    rmtree = remove

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


@HOOKS.register_module()
class DurableCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` that a ``kill -9`` at any moment of a
    save cannot make lose the last checkpoint.

    ``CheckpointHook`` (onedl-mmengine 0.10.12, mmengine 0.10.7) writes
    checkpoints in place, removes the oldest kept checkpoint (and, with
    ``save_best``, the previous best) *before* writing the new one, and
    writes ``last_checkpoint`` with a plain ``open('w')``: with
    ``max_keep_ckpts=1`` a kill during a save leaves no checkpoint, or an
    empty ``last_checkpoint``. Here, for a local ``out_dir``:

    - checkpoints are written atomically and durably (temporary file, fsync,
      rename, folder fsync: the ``durable_local`` file backend);
    - the new checkpoint, then ``last_checkpoint`` (also atomically), are
      written before the dropped or previous best checkpoint is removed;
    - temporary files a killed save left are removed at the start of
      training and after each save;
    - a checkpoint that ``max_keep_ckpts`` dropped but a kill left (between
      the ``last_checkpoint`` rename and the removal) is removed at the
      start of the resumed run: a ``filename_tmpl`` file of ``out_dir``
      older than the newest kept one and not kept (mmengine only removes
      the ids it still lists).

    With ``by_epoch=True`` and ``last_interval=N``, every ``N`` iterations
    inside an epoch the hook also writes an iteration checkpoint
    ``iter_<iter>.pth`` (named by ``last_checkpoint``, apart from
    ``max_keep_ckpts``), removing the previous one after it, and the last
    one after the next epoch checkpoint: a kill loses at most ``N``
    iterations, not an epoch. :class:`ResumableEpochBasedTrainLoop`
    continues it in the middle of its epoch.

    Args:
        last_interval (int): Iterations between iteration checkpoints of an
            epoch-based hook; -1 (default) writes none.

    Other arguments are those of ``CheckpointHook``; with
    ``file_client_args`` or a remote ``out_dir`` only the order of rotation
    changes.
    """

    def __init__(self, *args, last_interval: int = -1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_interval = last_interval
        self._iteration_ckpts: List[str] = []  # the rolling ones to remove

    def before_train(self, runner) -> None:
        if self.file_client_args is None and type(
                get_file_backend(self.out_dir or runner.work_dir,
                                 backend_args=self.backend_args)
        ) is LocalBackend:
            self.backend_args = dict(
                self.backend_args or {}, backend='durable_local')
        super().before_train(runner)
        if is_main_process():
            for path in self._remove_stale_temp_files(runner):
                runner.logger.info(
                    f'Removed {path}, left by an interrupted save.')
            for path in self._remove_dropped_checkpoints():
                runner.logger.info(
                    f'Removed {path}: max_keep_ckpts={self.max_keep_ckpts} '
                    'had dropped it before the last run was interrupted.')
            if self.by_epoch and self.last_interval > 0 and (
                    self.backend_args or {}).get('backend') == 'durable_local':
                # an earlier run's: removed after this run's next save
                self._iteration_ckpts = [
                    osp.join(self.out_dir, n) for n in os.listdir(self.out_dir)
                    if re.fullmatch(r'iter_\d+\.pth', n)]

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        super().after_train_iter(runner, batch_idx, data_batch, outputs)
        if (self.by_epoch and self.last_interval > 0
                and self.every_n_train_iters(runner, self.last_interval)
                and batch_idx + 1 < len(runner.train_dataloader)):
            runner.logger.info(
                f'Saving iteration checkpoint at {runner.iter + 1} '
                'iterations')
            self.save_iteration_checkpoint(runner)

    def save_iteration_checkpoint(self, runner) -> str:
        """Save ``iter_<iter>.pth`` in ``out_dir`` (also mid-epoch), name it
        in ``last_checkpoint``, then remove the previous iteration
        checkpoint; used by ``last_interval`` and :class:`PreemptionHook`.

        Returns:
            str: The checkpoint's path.
        """
        step = runner.iter + 1
        filename = f'iter_{step}.pth'
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=dict(epoch=runner.epoch, iter=step),
            by_epoch=False,
            backend_args=self.backend_args,
            **self.args)
        path = self.file_backend.join_path(self.out_dir, filename)
        if is_main_process():
            _atomic_write(path, osp.join(runner.work_dir, 'last_checkpoint'),
                          'w')
            self._remove_iteration_checkpoints(keep=path)
            self._iteration_ckpts = [path]
        return path

    def _remove_iteration_checkpoints(self, keep: str = None) -> None:
        for path in self._iteration_ckpts:
            if path != keep:
                _remove_checkpoint(self.file_backend, path)
        self._iteration_ckpts = []

    def _remove_dropped_checkpoints(self) -> List[str]:
        kept = list(getattr(self, 'keep_ckpt_ids', ()))
        if self.max_keep_ckpts <= 0 or not kept or (
                self.backend_args or {}).get('backend') != 'durable_local':
            return []
        name = re.compile(
            re.escape(self.filename_tmpl).replace(re.escape('{}'), r'(\d+)')
            + '$')
        removed = []
        for entry in sorted(os.listdir(self.out_dir)):
            found = name.match(entry)
            if found and int(found.group(1)) < max(kept) and int(
                    found.group(1)) not in kept:
                path = osp.join(self.out_dir, entry)
                _remove_checkpoint(self.file_backend, path)
                removed.append(path)
        return removed

    def _remove_stale_temp_files(self, runner) -> List[str]:
        folders = {runner.work_dir}
        if (self.backend_args or {}).get('backend') == 'durable_local':
            folders.add(self.out_dir)
        return [p for d in sorted(folders) for p in remove_stale_temp_files(d)]

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        dropped = kept = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            kept = list(self.keep_ckpt_ids)
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                dropped = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        try:
            runner.save_checkpoint(
                self.out_dir,
                filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
        except BaseException:
            if kept is not None:  # nothing was written: keep the old list
                self.keep_ckpt_ids.clear()
                self.keep_ckpt_ids.extend(kept)
                runner.message_hub.update_info('keep_ckpt_ids', kept)
            raise
        if not is_main_process():
            return
        _atomic_write(self.last_ckpt, osp.join(runner.work_dir,
                                               'last_checkpoint'), 'w')
        self._remove_iteration_checkpoints(keep=self.last_ckpt)
        if dropped is not None:
            _remove_checkpoint(
                self.file_backend,
                self.file_backend.join_path(
                    self.out_dir, self.filename_tmpl.format(dropped)))
        self._remove_stale_temp_files(runner)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        # Upstream removes the previous best before saving the new one:
        # every removal waits until the new checkpoints are written.
        backend = self.file_backend
        self.file_backend = deferred = _DeferredRemovals(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        kept = {self.last_ckpt, getattr(self, 'best_ckpt_path', None),
                *getattr(self, 'best_ckpt_path_dict', {}).values()}
        for path in deferred.pending:
            if path not in kept:
                _remove_checkpoint(backend, path)
