"""Training writes checkpoints atomically and resumes at the right iteration."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from conftest import REPO, config_path, demo_loader_options

DEMO_CFG = config_path('demo', 'vit-tiny_sup_demo.py')


def small_cfg(demo_root, work_dir, max_iters):
    cfg = Config.fromfile(DEMO_CFG)
    cfg.work_dir = str(work_dir)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = demo_root
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        cfg[loader].batch_size = 8
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=max_iters, val_interval=1000)
    cfg.default_hooks.checkpoint = dict(
        type='DurableCheckpointHook', by_epoch=False, interval=2)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.log_level = 'WARNING'
    return cfg


def train_recording_iters(runner: Runner) -> list:
    """Train ``runner``; the iteration numbers its steps started at."""
    seen = []

    class RecordIter(Hook):

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            seen.append(runner.iter)

    runner.register_hook(RecordIter(), priority='LOWEST')
    runner.train()
    return seen


def test_checkpoint_then_resume_continues_from_saved_iter(demo_root, tmp_path):
    runner = RUNNERS.build(small_cfg(demo_root, tmp_path, max_iters=2))
    runner.train()
    ckpt = tmp_path / 'iter_2.pth'
    assert ckpt.is_file()
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]
    saved = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert saved['meta']['iter'] == 2

    cfg = small_cfg(demo_root, tmp_path, max_iters=4)
    cfg.resume = True
    cfg.load_from = str(ckpt)
    resumed = RUNNERS.build(cfg)
    seen = train_recording_iters(resumed)
    assert seen == [2, 3]  # continues at iteration 2, not 0
    assert resumed.iter == 4
    weights = torch.load(tmp_path / 'iter_4.pth', map_location='cpu',
                         weights_only=True)['state_dict']
    before = saved['state_dict']
    key = 'backbone.patch_embed.projection.weight'
    assert not torch.equal(weights[key], before[key])


def test_train_cli_resume_auto(demo_root, tmp_path):
    args = [
        sys.executable, osp.join(REPO, 'tools', 'train.py'), DEMO_CFG,
        '--work-dir', str(tmp_path), '--cfg-options',
        *demo_loader_options(demo_root),
        'train_dataloader.batch_size=8', 'val_dataloader.batch_size=64',
        'default_hooks.checkpoint.interval=2'
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    first = subprocess.run(
        args + ['train_cfg.max_iters=2', 'train_cfg.val_interval=2'],
        env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / 'iter_2.pth').is_file()
    assert (tmp_path / 'last_checkpoint').read_text().strip().endswith(
        'iter_2.pth')
    second = subprocess.run(
        args + ['train_cfg.max_iters=4', 'train_cfg.val_interval=4',
                '--resume'],
        env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert 'resumed epoch: 0, iter: 2' in out
    assert (tmp_path / 'iter_4.pth').is_file()
    assert 'accuracy/top1' in out


def test_train_cli_rejects_missing_resume_file(tmp_path):
    res = subprocess.run([
        sys.executable, osp.join(REPO, 'tools', 'train.py'), DEMO_CFG,
        '--resume', str(tmp_path / 'nope.pth')
    ], env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert res.returncode != 0
    assert 'nope.pth' in res.stderr


def test_resume_finds_a_checkpoint_without_last_checkpoint(demo_root,
                                                           tmp_path):
    # A kill after iter_2.pth was written, before its name reached
    # last_checkpoint: --resume must not start again from iteration 0.
    RUNNERS.build(small_cfg(demo_root, tmp_path, max_iters=2)).train()
    os.remove(tmp_path / 'last_checkpoint')
    cfg = small_cfg(demo_root, tmp_path, max_iters=3)
    cfg.resume = True
    resumed = RUNNERS.build(cfg)
    seen = train_recording_iters(resumed)
    assert seen == [2]


def test_auto_resume_refuses_a_url_in_last_checkpoint(demo_root, tmp_path):
    # mmengine loaded it from there: a resumed run would continue from a
    # file of someone else's choosing.
    (tmp_path / 'last_checkpoint').write_text('http://example.com/iter_2.pth')
    cfg = small_cfg(demo_root, tmp_path, max_iters=3)
    cfg.resume = True
    runner = RUNNERS.build(cfg)
    with pytest.raises(ValueError, match=f"{tmp_path / 'last_checkpoint'} "
                       "names 'http://example.com/iter_2.pth', a URL"):
        runner.load_or_resume()
