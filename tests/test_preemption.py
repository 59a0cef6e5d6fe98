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


def two_ranks(demo_root, tmp_path, sig):
    """Start 200 iterations on two gloo ranks (tools/dist_train.sh), send
    ``sig`` to rank 1 at iteration 2; (launcher's exit code, seconds from
    the signal to its end, log)."""
    import subprocess
    import sys
    from conftest import REPO
    from test_balancer import _free_port
    from test_checkpoint_durability import children
    env = dict(os.environ, PYTHONPATH=REPO, PORT=str(_free_port()),
               PATH=f'{os.path.dirname(sys.executable)}:{os.environ["PATH"]}',
               OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    log = tmp_path / 'run.log'
    options = train_args(demo_root, tmp_path, 200,
                         'default_hooks.checkpoint.interval=200')
    with open(log, 'w') as out:
        launcher = subprocess.Popen(
            ['bash', os.path.join(REPO, 'tools', 'dist_train.sh'),
             options[0], '2', *options[1:]],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: re.search(r'Iter\(train\) \[\s*2/',
                                          log.read_text()), 300), \
            log.read_text()[-3000:]

        def rank(pid):
            with open(f'/proc/{pid}/environ', 'rb') as f:
                return dict(v.split(b'=', 1) for v in f.read().split(b'\0')
                            if b'=' in v).get(b'RANK')

        rank1 = [p for c in children(launcher.pid) for p in [c, *children(c)]
                 if rank(p) == b'1']
        assert len(rank1) == 1, rank1
        os.kill(rank1[0], sig)
        sent = time.monotonic()
        code = launcher.wait(120)
        return code, time.monotonic() - sent, log.read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_one_rank_signalled_all_ranks_save_the_same_iteration(
        demo_root, tmp_path):
    """Only rank 1 gets SIGUSR1: rank 0 learns it from the all-reduced flag,
    one checkpoint of that iteration is written, the ranks exit with 75."""
    _, _, text = two_ranks(demo_root, tmp_path, signal.SIGUSR1)
    found = re.search(r'Preempted by another rank after iteration (\d+): '
                      r'checkpoint (\S+); exiting with code 75', text)
    assert found, text[-3000:]
    assert re.search(r'exitcode\s*:\s*75', text), text[-3000:]
    assert recorded_checkpoint(tmp_path) == found.group(2)
    assert saved_iter(found.group(2)) == int(found.group(1))
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth')) \
        == [os.path.basename(found.group(2))]


def test_kill9_of_one_rank_still_ends_the_job_at_once(demo_root, tmp_path):
    """torchrun sends SIGTERM to the surviving rank, which PreemptionHook
    now catches: the rank must still end at once (its next collective
    fails; 0.7 s measured), not train on or wait for torchrun's SIGKILL."""
    code, seconds, text = two_ranks(demo_root, tmp_path, signal.SIGKILL)
    assert code != 0 and seconds < 5, (seconds, text[-3000:])
