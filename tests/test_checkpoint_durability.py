"""kill -9 of tools/train.py at any moment of a checkpoint save loses nothing
(``DurableCheckpointHook``, ``M3IRunner``); automatic resume continues only
from the work dir's own checkpoints; a non-finite loss or parameter stops
training before it reaches a checkpoint.

Every run but the last test's is a real ``tools/train.py`` process (forked
from tests/train_zygote.py, which imported the stack once), killed with
SIGKILL.
"""
import os
import os.path as osp
import random
import re
import signal
import time
import zipfile

import pytest
import torch
from mmengine.config import Config
from mmengine.evaluator import BaseMetric
from mmengine.fileio import get_file_backend
from mmengine.registry import RUNNERS

from conftest import config_path, load_script
from m3i_mm.engine.checkpoint import find_resumable_checkpoint
from train_zygote import UMASK

DEMO_CFG = config_path('demo', 'vit-tiny_sup_demo.py')


def train_args(demo_root, work_dir, max_iters, *options, workers=0):
    return [
        DEMO_CFG, '--work-dir', str(work_dir), '--no-validate',
        '--cfg-options', f'train_dataloader.dataset.data_root={demo_root}',
        f'train_dataloader.num_workers={workers}',
        f'train_dataloader.persistent_workers={workers > 0}',
        'train_dataloader.batch_size=2', 'model.backbone.arch.num_layers=1',
        f'train_cfg.max_iters={max_iters}',
        'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.max_keep_ckpts=1',
        'default_hooks.logger.interval=1', *options
    ]


def recorded_checkpoint(work_dir) -> str:
    """The checkpoint ``last_checkpoint`` names, asserted complete."""
    record = osp.join(work_dir, 'last_checkpoint')
    assert osp.isfile(record), f'no last_checkpoint: {os.listdir(work_dir)}'
    with open(record) as f:
        named = f.read().strip()
    assert named, 'last_checkpoint is empty'
    assert osp.isfile(named), (f'last_checkpoint names missing {named}; '
                               f'work dir: {sorted(os.listdir(work_dir))}')
    assert zipfile.is_zipfile(named), f'{named} is truncated'
    return named


def saved_iter(path: str) -> int:
    return torch.load(path, map_location='cpu',
                      weights_only=True)['meta']['iter']


def resumed_iter(log: str) -> int:
    found = re.search(r'resumed epoch: \d+, iter: (\d+)', log)
    assert found, log[-3000:]
    return int(found.group(1))


def children(pid: int):
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its reaper)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_kill9_during_saves_never_loses_the_checkpoint(
        zygote, demo_root, tmp_path):
    work = tmp_path / 'work'
    status, log = zygote.run(train_args(demo_root, work, 1), tmp_path / '0')
    assert status == 0, log[-3000:]
    done = saved_iter(recorded_checkpoint(work))
    points = []
    # Each resumed run rotates at its first save (max_keep_ckpts=1): kill
    # it at the n-th file event of that save, i.e. just before/after each
    # create, rename and removal; 8 covers a whole save. The next run
    # resumes where the last complete save was.
    for n in range(1, 9):
        args = train_args(demo_root, work, 100) + ['--resume']
        status, log = zygote.run(args, tmp_path / f'{n}', kill_at=n)
        assert status == -signal.SIGKILL, f'kill point {n}: {log[-3000:]}'
        point = re.search(r'fault injection: SIGKILL at event \d+, (.*)', log)
        assert point, log[-3000:]
        points.append(point.group(1))
        assert resumed_iter(log) == done
        done = saved_iter(recorded_checkpoint(work))
        assert done in (resumed_iter(log), resumed_iter(log) + 1), points
    # The kills hit the writes of the checkpoint and of last_checkpoint and
    # the removal of the old checkpoint.
    assert any('iter_' in p and '.tmp' in p for p in points), points
    assert any('last_checkpoint' in p for p in points), points
    assert any(p.startswith('before remove') for p in points), points


def test_kill9_of_trainer_takes_its_dataloader_workers(
        zygote, demo_root, tmp_path):
    # Batches of 64 as in the demo: a worker then blocks on the full result
    # pipe and, without the fix, lives on for good (parent PID 1, 660 MB).
    log = tmp_path / 'run.log'
    pid = zygote.start(
        train_args(demo_root, tmp_path, 100, 'train_dataloader.batch_size=64',
                   workers=2), log)
    assert wait_for(lambda: log.is_file() and 'Saving checkpoint at 2'
                    in log.read_text(), 120)
    time.sleep(random.Random(0).uniform(0, 0.05))  # a moment of the save
    workers = children(pid)
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait(pid) == -signal.SIGKILL
    assert len(workers) >= 2, workers  # the two workers (and any helper)
    assert wait_for(lambda: not any(map(alive, workers)), 3), (
        f'data-loader workers {[w for w in workers if alive(w)]} outlived '
        'their killed trainer')
    assert saved_iter(recorded_checkpoint(tmp_path)) in (1, 2)


def test_next_run_removes_temp_files_and_outputs_follow_umask(
        zygote, demo_root, tmp_path):
    # Killed right after the first checkpoint's temporary file was created.
    status, log = zygote.run(train_args(demo_root, tmp_path, 1),
                             tmp_path / 'killed.log', kill_at=1)
    assert status == -signal.SIGKILL, log[-3000:]
    assert [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]
    status, log = zygote.run(train_args(demo_root, tmp_path, 1),
                             tmp_path / 'next.log')
    assert status == 0, log[-3000:]
    left = sorted(os.listdir(tmp_path))
    assert not [name for name in left if name.endswith('.tmp')], left
    for name in ('iter_1.pth', 'last_checkpoint'):
        mode = os.stat(tmp_path / name).st_mode & 0o777
        assert mode == 0o666 & ~UMASK, f'{name}: {oct(mode)}'


def test_resume_falls_back_when_last_checkpoint_is_broken(
        zygote, demo_root, tmp_path):
    status, log = zygote.run(train_args(demo_root, tmp_path, 2),
                             tmp_path / 'first.log')
    assert status == 0, log[-3000:]
    # Files a kill left with the old code: an empty last_checkpoint, a
    # truncated newer checkpoint.
    (tmp_path / 'last_checkpoint').write_text('')
    (tmp_path / 'iter_3.pth').write_bytes(
        (tmp_path / 'iter_2.pth').read_bytes()[:1000])
    status, log = zygote.run(
        train_args(demo_root, tmp_path, 3) + ['--resume'],
        tmp_path / 'second.log')
    assert status == 0, log[-3000:]
    assert 'is missing or empty; resuming from the newest intact ' \
           f'checkpoint {tmp_path / "iter_2.pth"}' in log
    assert resumed_iter(log) == 2


def test_durable_backend_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / 'ckpt.pth'
    backend = get_file_backend(backend_args=dict(backend='durable_local'))
    backend.put(b'old', str(target))

    def fail(fd):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', fail)
    with pytest.raises(OSError, match='disk full'):
        backend.put(b'new-but-interrupted', str(target))
    assert target.read_bytes() == b'old'  # never truncated
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pth']  # no temp left
    monkeypatch.undo()
    backend.put_text('new', str(target))
    assert target.read_text() == 'new'


@pytest.mark.parametrize('named', ['http://example.com/iter_2.pth',
                                   'OUTSIDE', '../other/iter_2.pth'])
def test_resume_refuses_last_checkpoint_outside_the_work_dir(tmp_path, named):
    """mmengine loaded whatever ``last_checkpoint`` named (a URL, another
    run's folder); a resumed run would continue from someone else's file."""
    work, other = tmp_path / 'work', tmp_path / 'other'
    work.mkdir(), other.mkdir()
    torch.save(dict(meta={}), other / 'iter_2.pth')
    torch.save(dict(meta={}), work / 'iter_1.pth')
    if named == 'OUTSIDE':
        named = str(other / 'iter_2.pth')
    elif not named.startswith('http'):
        named = str(work / named)
    (work / 'last_checkpoint').write_text(named)
    with pytest.raises(ValueError, match=re.escape(
            f"{work / 'last_checkpoint'} names {named!r}")):
        find_resumable_checkpoint(str(work))
    (work / 'last_checkpoint').write_text(str(work / 'iter_1.pth'))
    assert find_resumable_checkpoint(str(work)) == str(work / 'iter_1.pth')


def test_train_cli_refuses_a_resume_url(monkeypatch):
    train = load_script('tools', 'train.py')
    monkeypatch.setattr('sys.argv', [
        'train.py', DEMO_CFG, '--resume', 'https://example.com/iter_2.pth'])
    args = train.parse_args()
    with pytest.raises(ValueError, match='--resume takes a local checkpoint '
                       'file, not the URL https://example.com/iter_2.pth'):
        train.merge_args(Config.fromfile(args.config), args)


def all_finite(path: str) -> bool:
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    tensors = list(ckpt['state_dict'].values()) + [
        t for state in ckpt['optimizer']['state'].values()
        for t in state.values() if isinstance(t, torch.Tensor)
    ]
    return all(torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize(
    'option, fault_iter',
    [('optim_wrapper.optimizer.lr=1e9', 2),
     ('data_preprocessor.std=[0,0,0]', 1)])
def test_non_finite_loss_stops_training_before_a_checkpoint(
        zygote, demo_root, tmp_path, option, fault_iter):
    status, log = zygote.run(train_args(demo_root, tmp_path, 6, option),
                             tmp_path / 'run.log')
    assert status not in (0, -signal.SIGKILL), log[-3000:]
    assert (f'FloatingPointError: Non-finite loss at iteration {fault_iter}: '
            'loss=nan') in log, log[-3000:]
    saved = sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth'))
    assert saved == [f'iter_{i}.pth' for i in range(1, fault_iter)][-1:]
    if saved:  # the last good one is kept and still the one to resume
        good = recorded_checkpoint(tmp_path)
        assert osp.basename(good) == saved[0] and all_finite(good)
        assert f'the last checkpoint is {good}' in log
    else:
        assert not osp.exists(tmp_path / 'last_checkpoint')


class EvaluationCount(BaseMetric):
    """A score that improves at every evaluation (test-only metric)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        self.calls += 1
        return dict(count=self.calls)


def test_failed_save_keeps_the_previous_best_checkpoint(demo_root, tmp_path):
    # In-process: the new best checkpoint's save fails (disk full, kill);
    # the previous best must still be there.
    cfg = Config.fromfile(DEMO_CFG)
    cfg.work_dir = str(tmp_path)
    cfg.model.backbone.arch.num_layers = 1
    for split in ('train', 'val'):
        cfg[f'{split}_dataloader'].update(
            num_workers=0, persistent_workers=False, batch_size=2)
        cfg[f'{split}_dataloader'].dataset.data_root = demo_root
    cfg.val_dataloader.dataset.indices = 2
    cfg.val_evaluator = dict(type=EvaluationCount)
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=3, val_interval=1)
    cfg.default_hooks.checkpoint = dict(
        type='DurableCheckpointHook', by_epoch=False, interval=1,
        max_keep_ckpts=1, save_best='count', rule='greater')
    cfg.log_level = 'WARNING'
    runner = RUNNERS.build(cfg)
    save = runner.save_checkpoint

    def failing_save(out_dir, filename, *args, **kwargs):
        if filename == 'best_count_iter_2.pth':
            raise OSError('disk full')
        save(out_dir, filename, *args, **kwargs)

    runner.save_checkpoint = failing_save
    with pytest.raises(OSError, match='disk full'):
        runner.train()
    assert (tmp_path / 'best_count_iter_1.pth').is_file(), sorted(
        os.listdir(tmp_path))
    assert recorded_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')


def flip_a_weight_bit(path) -> None:
    """Flip one bit in the middle of the largest tensor record of ``path``
    (a storage of the checkpoint; its CRC-32 no longer matches)."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, 'r+b') as f:
        f.seek(info.header_offset)
        header = f.read(30)
        start = (info.header_offset + 30 + int.from_bytes(header[26:28],
                                                          'little') +
                 int.from_bytes(header[28:30], 'little'))
        f.seek(start + info.file_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x40]))


def with_a_nan_weight(path) -> None:
    """Rewrite ``path`` (valid zip and CRCs) with a NaN in one weight."""
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    name = next(k for k, v in ckpt['state_dict'].items()
                if v.is_floating_point())
    ckpt['state_dict'][name].view(-1)[0] = float('nan')
    torch.save(ckpt, path)


@pytest.mark.parametrize('damage', [flip_a_weight_bit, with_a_nan_weight])
def test_resume_skips_a_damaged_newest_checkpoint(zygote, demo_root,
                                                  tmp_path, damage):
    """A bit-flipped (or NaN) newest checkpoint was resumed from (today's
    parser at least refuses the CRC mismatch, ending the run); the intact
    older one beside it must be used, with a warning naming both."""
    status, log = zygote.run(
        train_args(demo_root, tmp_path, 2,
                   'default_hooks.checkpoint.max_keep_ckpts=2'),
        tmp_path / 'first.log')
    assert status == 0, log[-3000:]
    newest, older = tmp_path / 'iter_2.pth', tmp_path / 'iter_1.pth'
    damage(newest)
    status, log = zygote.run(
        train_args(demo_root, tmp_path, 3,
                   'default_hooks.checkpoint.max_keep_ckpts=2') + ['--resume'],
        tmp_path / 'second.log')
    assert status == 0, log[-3000:]
    assert re.search(
        rf"names '{re.escape(str(newest))}', which is unusable: .*"
        rf'(CRC|NaN).*; resuming from the newest intact checkpoint '
        rf'{re.escape(str(older))} instead', log), log[-3000:]
    assert resumed_iter(log) == 1


def truncate(path) -> None:
    with open(path, 'r+b') as f:
        f.truncate(1000)


@pytest.mark.parametrize('damage', [truncate, flip_a_weight_bit])
def test_resume_refuses_when_no_checkpoint_is_intact(zygote, demo_root,
                                                     tmp_path, damage):
    """``--resume`` with only a truncated checkpoint started over from
    iteration 1 with exit code 0 (a bit-flipped one failed in the
    parser, naming no way out)."""
    status, log = zygote.run(train_args(demo_root, tmp_path, 1),
                             tmp_path / 'first.log')
    assert status == 0, log[-3000:]
    only = tmp_path / 'iter_1.pth'
    damage(only)
    before = only.read_bytes()
    status, log = zygote.run(
        train_args(demo_root, tmp_path, 3) + ['--resume'],
        tmp_path / 'second.log')
    assert status == 1, log[-3000:]
    assert (f'NoIntactCheckpointError: --resume found no intact checkpoint '
            f'in {tmp_path}: {only}: it') in log, log[-3000:]
    assert 'run without --resume to start over' in log
    assert only.read_bytes() == before
    assert sorted(n for n in os.listdir(tmp_path)
                  if n.endswith('.pth')) == ['iter_1.pth']


def test_next_run_removes_the_checkpoint_a_kill_left_undropped(
        zygote, demo_root, tmp_path):
    """Killed after ``last_checkpoint`` named the new checkpoint, before the
    dropped one was removed: it stayed for good (``iter_1.pth`` beside
    ``iter_3.pth`` with ``max_keep_ckpts=1``)."""
    status, log = zygote.run(train_args(demo_root, tmp_path, 1),
                             tmp_path / 'first.log')
    assert status == 0, log[-3000:]
    # Event 7 of a rotating save: before removing the dropped checkpoint.
    status, log = zygote.run(
        train_args(demo_root, tmp_path, 3) + ['--resume'],
        tmp_path / 'killed.log', kill_at=7)
    assert status == -signal.SIGKILL, log[-3000:]
    assert f'SIGKILL at event 7, before remove {tmp_path / "iter_1.pth"}' \
        in log, log[-3000:]
    assert recorded_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')
    status, log = zygote.run(
        train_args(demo_root, tmp_path, 3) + ['--resume'],
        tmp_path / 'next.log')
    assert status == 0, log[-3000:]
    assert f'Removed {tmp_path / "iter_1.pth"}: max_keep_ckpts=1 had ' \
        'dropped it' in log, log[-3000:]
    assert sorted(n for n in os.listdir(tmp_path)
                  if n.endswith('.pth')) == ['iter_3.pth']


def epoch_args(demo_root, tmp_path, work_dir):
    """2 epochs of 20 iterations, an epoch checkpoint each, an iteration
    checkpoint every 5 iterations (the pre-training configs' settings)."""
    cfg = tmp_path / 'epochs.py'
    cfg.write_text(f"""
_base_ = [{DEMO_CFG!r}]
train_cfg = dict(_delete_=True, type='ResumableEpochBasedTrainLoop',
                 max_epochs=2)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1,
                                     max_keep_ckpts=1, last_interval=5))
""")
    return [str(cfg)] + [
        a for a in train_args(demo_root, work_dir, 0)[1:]
        if not a.startswith('train_cfg.max_iters')] + [
        'train_dataloader.dataset.indices=40',
        'train_dataloader.sampler.type=DefaultSampler',
        'default_hooks.checkpoint.interval=1']


def test_epoch_based_run_killed_mid_epoch_loses_minutes_not_the_epoch(
        zygote, demo_root, tmp_path):
    """An epoch-based run checkpointed only per epoch, so a kill -9 lost the
    epoch; mmengine's EpochBasedTrainLoop also restarted an epoch from its
    first batch. Now: a rolling iteration checkpoint every 5 iterations,
    resumed in the middle of its epoch to the uninterrupted run's weights."""
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    status, log = zygote.run(epoch_args(demo_root, tmp_path, full),
                             tmp_path / 'full.log')
    assert status == 0, log[-3000:]
    assert sorted(n for n in os.listdir(full) if n.endswith('.pth')) == [
        'epoch_2.pth']  # the iteration checkpoints were removed

    log = tmp_path / 'killed.log'
    pid = zygote.start(epoch_args(demo_root, tmp_path, cut), log)
    record = cut / 'last_checkpoint'
    assert wait_for(lambda: record.is_file() and 'iter_25.pth' in
                    record.read_text(), 120, 0.01), log.read_text()[-3000:]
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait(pid) == -signal.SIGKILL
    assert not (cut / 'epoch_2.pth').exists()
    last = recorded_checkpoint(cut)
    assert re.fullmatch(r'iter_(25|30|35)\.pth', osp.basename(last)), last
    assert not (cut / 'iter_15.pth').exists()  # removed after epoch_1

    status, text = zygote.run(
        epoch_args(demo_root, tmp_path, cut) + ['--resume'],
        tmp_path / 'resumed.log')
    assert status == 0, text[-3000:]
    done = resumed_iter(text)
    assert f'Resuming epoch 2 after its batch {done - 20}.' in text
    want = torch.load(full / 'epoch_2.pth', weights_only=True)
    got = torch.load(cut / 'epoch_2.pth', weights_only=True)
    assert got['meta']['iter'] == want['meta']['iter'] == 40
    for key, value in want['state_dict'].items():
        assert torch.equal(got['state_dict'][key], value), key
    assert sorted(n for n in os.listdir(cut) if n.endswith('.pth')) == [
        'epoch_2.pth']
