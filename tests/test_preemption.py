"""SIGTERM or SIGUSR1 mid-run: ``tools/train.py`` finishes the iteration,
saves, exits with code 75, and ``--resume`` continues bit-exactly
(``PreemptionHook`` in ``default_runtime.py``).

Runs are real ``tools/train.py`` processes forked from tests/train_zygote.py.
"""
import os
import re
import signal
import time

import pytest
import torch

from test_checkpoint_durability import (recorded_checkpoint, resumed_iter,
                                        saved_iter, train_args, wait_for)

from m3i_mm.engine.hooks import PREEMPTED_EXIT_CODE

MAX_ITERS = 12


def args(demo_root, work_dir, *extra):
    # Checkpoints only at the end: the preempted one is the hook's.
    return train_args(demo_root, work_dir, MAX_ITERS,
                      f'default_hooks.checkpoint.interval={MAX_ITERS}',
                      *extra)


@pytest.fixture(scope='module')
def uninterrupted(zygote, demo_root, tmp_path_factory):
    work = tmp_path_factory.mktemp('full')
    status, log = zygote.run(args(demo_root, work), work / 'run.log')
    assert status == 0, log[-3000:]
    return torch.load(work / f'iter_{MAX_ITERS}.pth', weights_only=True)


@pytest.mark.parametrize('signals', [
    (signal.SIGTERM, ), (signal.SIGUSR1, ),
    (signal.SIGUSR1, signal.SIGTERM)])  # the second one during the save
def test_signal_saves_exits_75_and_resumes_bit_exactly(
        zygote, demo_root, tmp_path, uninterrupted, signals):
    log = tmp_path / 'preempted.log'
    pid = zygote.start(args(demo_root, tmp_path), log)
    assert wait_for(lambda: log.is_file() and re.search(
        r'Iter\(train\) \[\s*2/', log.read_text()), 120), log.read_text()
    for sig in signals:
        os.kill(pid, sig)
        time.sleep(0.02)
    assert zygote.wait(pid) == PREEMPTED_EXIT_CODE == 75, \
        log.read_text()[-3000:]
    text = log.read_text()
    name = signal.Signals(signals[0]).name
    found = re.search(rf'Preempted by {name} after iteration (\d+): '
                      rf'checkpoint (\S+); exiting with code 75', text)
    assert found, text[-3000:]
    assert text.count('saving checkpoint at') == 1, text[-3000:]
    step = int(found.group(1))
    assert 2 <= step < MAX_ITERS
    assert recorded_checkpoint(tmp_path) == found.group(2) == str(
        tmp_path / f'iter_{step}.pth')
    assert saved_iter(found.group(2)) == step

    status, text = zygote.run(args(demo_root, tmp_path) + ['--resume'],
                              tmp_path / 'resumed.log')
    assert status == 0, text[-3000:]
    assert resumed_iter(text) == step
    final = torch.load(tmp_path / f'iter_{MAX_ITERS}.pth', weights_only=True)
    for key, value in uninterrupted['state_dict'].items():
        assert torch.equal(final['state_dict'][key], value), key


@pytest.mark.parametrize('restart', [0, 1])
def test_slurm_script_requests_the_signal_and_requeues(tmp_path, restart):
    """tools/slurm_train.sh with stand-ins for srun and scontrol: srun gets
    ``--signal=USR1@180``, exit code 75 requeues the job, a requeued run
    adds ``--resume``."""
    import subprocess
    from conftest import REPO
    calls = tmp_path / 'calls'
    for tool, code in (('srun', PREEMPTED_EXIT_CODE), ('scontrol', 0)):
        (tmp_path / tool).write_text(
            f'#!/bin/sh\necho {tool} "$@" >> {calls}\nexit {code}\n')
        (tmp_path / tool).chmod(0o755)
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}',
               SLURM_JOB_ID='4242', SLURM_RESTART_COUNT=str(restart))
    done = subprocess.run(
        ['bash', os.path.join(REPO, 'tools', 'slurm_train.sh'), 'part',
         'job', 'cfg.py', 'work', '--cfg-options', 'a=1'],
        env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    srun, scontrol = calls.read_text().splitlines()
    assert '--signal=USR1@180' in srun.split()
    assert srun.endswith('--cfg-options a=1' + (' --resume' if restart
                                                 else '')), srun
    assert scontrol == 'scontrol requeue 4242'
