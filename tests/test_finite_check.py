"""FiniteCheckHook: what counts as non-finite, in a real Runner.

tools/train.py runs with a NaN loss are in test_checkpoint_durability.py.
"""
import glob
import math
import os
import os.path as osp
from functools import partial

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim.optimizer import amp_optimizer_wrapper
from mmengine.registry import HOOKS, RUNNERS, DefaultScope

from conftest import config_path
from m3i_mm.engine.hooks import FiniteCheckHook
from m3i_mm.engine.hooks.finite_check_hook import (non_finite_losses,
                                                   non_finite_tensors)


def small_cfg(demo_root, work_dir, max_iters):
    cfg = Config.fromfile(config_path('demo', 'vit-tiny_sup_demo.py'))
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader.dataset.data_root = demo_root
    cfg.train_dataloader.update(
        num_workers=0, persistent_workers=False, batch_size=2)
    cfg.model.backbone.arch.num_layers = 1
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.default_hooks.checkpoint = dict(
        type='DurableCheckpointHook', by_epoch=False, interval=1,
        max_keep_ckpts=1)
    cfg.log_level = 'WARNING'
    return cfg


def test_non_finite_losses_names_the_loss_terms():
    log_vars = dict(
        loss=torch.tensor(math.nan), loss_cls=torch.tensor(math.inf),
        loss_box=torch.tensor(0.5), acc=torch.tensor(math.nan))
    bad = non_finite_losses(log_vars)
    assert [k for k, _ in bad] == ['loss', 'loss_cls']  # not 'acc'
    assert math.isnan(bad[0][1]) and bad[1][1] == math.inf
    assert non_finite_losses(dict(loss=torch.tensor(1.0), acc=math.nan)) == []


def test_buffers_may_hold_inf_but_not_nan():
    ckpt = dict(
        state_dict=dict(w=torch.ones(2), mask=torch.tensor([0., -math.inf])),
        optimizer=dict(state={0: dict(exp_avg=torch.zeros(2))}),
        message_hub=dict(loss=torch.tensor(math.nan)))  # history: ignored
    assert non_finite_tensors(ckpt, buffers=['mask']) == []
    assert non_finite_tensors(ckpt) == ['state_dict.mask']
    ckpt['state_dict']['mask'][0] = math.nan
    ckpt['optimizer']['state'][0]['exp_avg'][1] = math.inf
    assert non_finite_tensors(ckpt, buffers=['mask']) == [
        'state_dict.mask', 'optimizer.state.0.exp_avg']


class PoisonParameter(Hook):
    """After the optimizer step of iteration ``at``, one parameter is NaN
    while that iteration's loss was finite."""

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.at:
            with torch.no_grad():
                runner.model.backbone.cls_token[0, 0, 0] = math.nan


def test_non_finite_parameter_is_never_saved(demo_root, tmp_path):
    runner = RUNNERS.build(small_cfg(demo_root, tmp_path, max_iters=3))
    runner.register_hook(PoisonParameter(at=2), priority='HIGHEST')
    with pytest.raises(FloatingPointError) as err:
        runner.train()
    message = str(err.value)
    assert 'at iteration 2' in message
    assert 'state_dict.backbone.cls_token' in message
    assert 'optimizer' not in message  # the state of the step was finite
    good = str(tmp_path / 'iter_1.pth')
    assert f'the last checkpoint is {good}' in message
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth')) == [
        'iter_1.pth']
    assert (tmp_path / 'last_checkpoint').read_text() == good


def test_amp_overflowing_gradients_do_not_stop_training(
        demo_root, tmp_path, monkeypatch):
    # mmengine's AmpOptimWrapper on CPU (bfloat16 autocast) with a CPU
    # GradScaler: a scale of 2**127 overflows the scaled loss, so the first
    # gradients are inf and the scaler skips steps, as under fp16 on GPU.
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                        lambda: True)
    monkeypatch.setattr(amp_optimizer_wrapper, 'GradScaler',
                        partial(torch.amp.GradScaler, device='cpu'))
    cfg = small_cfg(demo_root, tmp_path, max_iters=3)
    cfg.optim_wrapper.update(
        type='AmpOptimWrapper', dtype='bfloat16',
        loss_scale=dict(init_scale=2.**127))
    runner = RUNNERS.build(cfg)
    assert any(isinstance(h, FiniteCheckHook) for h in runner.hooks)
    runner.train()
    scaler = runner.optim_wrapper.loss_scaler
    assert scaler.get_scale() < 2.**127  # some gradients were inf
    assert runner.iter == 3
    assert (tmp_path / 'iter_3.pth').is_file()


CONFIGS = sorted(
    p for p in glob.glob(config_path('**', '*.py'), recursive=True)
    if f'{os.sep}_base_{os.sep}' not in p)


@pytest.mark.parametrize('path', CONFIGS,
                         ids=lambda p: osp.relpath(p, config_path()))
def test_every_config_trains_with_the_hook(path):
    cfg = Config.fromfile(path)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        hook = HOOKS.build(cfg.default_hooks['finite_check'])
    assert isinstance(hook, FiniteCheckHook)
