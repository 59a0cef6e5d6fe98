"""The trainer exits when it is done (issue 19, fault 1).

On a GPU, ``tools/dist_train.sh`` hung after its last checkpoint with its
persistent DataLoader workers and pin-memory thread alive: their shutdown
was left to the interpreter's teardown (torch's ``atexit`` handlers, the
``__del__`` of iterators that the train loop still references). The runner
now stops every loader's workers when ``train()`` returns and destroys the
process group it started, so the exit no longer depends on teardown order.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, config_path
from test_balancer import _free_port
from test_checkpoint_durability import train_args

WORKERS = 16


@pytest.mark.parametrize('config, loaders', [
    (('pretrain', 'm3i_vit-tiny_demo.py'), ('train_dataloader', )),
    (('demo', 'vit-tiny_sup_demo.py'), ('train_dataloader', 'val_dataloader'))
])
def test_train_returns_with_no_worker_left(demo_root, tmp_path, config,
                                           loaders):
    """``runner.train()`` returns with the persistent workers of the train
    and val loaders stopped (before the fix they lived until the interpreter
    exited)."""
    script = textwrap.dedent(f"""
        import multiprocessing
        from mmengine.config import Config
        from mmengine.registry import RUNNERS
        cfg = Config.fromfile({config_path(*config)!r})
        cfg.merge_from_dict({{
            'work_dir': {str(tmp_path)!r},
            'model.backbone.arch.num_layers': 1,
            'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
            'default_hooks.logger.interval': 1,
        }})
        for name in {loaders!r}:
            cfg[name].update(num_workers=4, persistent_workers=True,
                             batch_size=2)
            cfg[name].dataset.data_root = {demo_root!r}
        runner = RUNNERS.build(cfg)
        runner.train()
        print('ALIVE', len(multiprocessing.active_children()))
    """)
    run = subprocess.run(
        [sys.executable, '-c', script], cwd=REPO, capture_output=True,
        text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'ALIVE 0' in run.stdout, run.stdout[-500:]
    assert 'Iter(train) [2/2]' in run.stderr + run.stdout


@pytest.mark.parametrize('ranks', [1, 2])
def test_exits_within_10s_of_its_last_checkpoint(demo_root, tmp_path, ranks):
    """``tools/train.py`` and ``tools/dist_train.sh CONFIG 2`` with 16
    persistent workers per rank end within 10 s of the last checkpoint."""
    work = tmp_path / 'work'
    options = train_args(demo_root, work, 3, workers=WORKERS)
    if ranks == 1:
        command = [sys.executable, os.path.join(REPO, 'tools', 'train.py'),
                   *options]
    else:
        command = ['bash', os.path.join(REPO, 'tools', 'dist_train.sh'),
                   options[0], str(ranks), *options[1:]]
    env = dict(os.environ, PYTHONPATH=REPO, PORT=str(_free_port()),
               PATH=f'{os.path.dirname(sys.executable)}:{os.environ["PATH"]}',
               OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    ended = time.time()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    last = work / 'iter_3.pth'
    assert last.exists(), sorted(os.listdir(work))
    assert ended - last.stat().st_mtime < 10, ended - last.stat().st_mtime
