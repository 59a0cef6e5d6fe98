"""The InternImage dense-prediction demos (Mask2Former on the ADE-layout and
DINO on the COCO-layout demo canvases) train and evaluate on CPU,
in-process. The real-scale configs they inherit are built by
tests/test_configs.py."""
import math

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS

from conftest import config_path
from test_downstream_configs import Probe, small

SEG_DEMO = config_path('downstream', 'ade20k',
                       'mask2former_internimage-tiny_m3i_demo.py')
DET_DEMO = config_path('downstream', 'coco',
                       'dino-4scale_internimage-tiny_m3i_demo.py')


class LossProbe(Hook):
    """Records the training losses of every iteration."""

    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses.append({k: float(v) for k, v in outputs.items()})


def run(cfg):
    """Trains the demo config; its runner, validation metrics and losses."""
    torch.manual_seed(0)
    runner = RUNNERS.build(cfg)
    probe, losses = Probe(), LossProbe()
    runner.register_hook(probe, priority='LOWEST')
    runner.register_hook(losses, priority='LOWEST')
    runner.train()
    return runner, probe.metrics, losses.losses


def check_losses(losses, iters):
    assert len(losses) == iters
    for step in losses:
        assert 'loss' in step
        assert all(math.isfinite(v) for v in step.values()), step


def test_mask2former_internimage_demo_trains_and_evaluates(
        ade_root, tmp_path):
    cfg = small(SEG_DEMO, tmp_path, ade_root, iters=3, num_val=4)
    runner, metrics, losses = run(cfg)
    model = runner.model
    assert type(model.backbone).__name__ == 'InternImage'
    assert model.backbone.channels == [16, 32, 64, 128]
    assert type(model.decode_head).__name__ == 'Mask2FormerHead'
    check_losses(losses, 3)
    assert any('loss_mask' in k for k in losses[0])
    assert 0.0 <= metrics['mIoU'] <= 100.0
    assert {'aAcc', 'mAcc'} <= set(metrics)
    # The official layer-wise lr decay 0.95 over the 5 blocks (7 depths);
    # the head's queries at the stem's depth, its other parameters at 1.
    scales = {
        g['param_name']: g['lr_scale']
        for g in runner.optim_wrapper.optimizer.param_groups
    }
    assert scales['backbone.stem.conv1.weight'] == pytest.approx(0.95**6)
    assert scales['backbone.stages.2.blocks.1.dcn.input_proj.weight'] == \
        pytest.approx(0.95**2)
    assert scales['decode_head.query_embed.weight'] == pytest.approx(0.95**6)
    assert scales['decode_head.cls_embed.weight'] == pytest.approx(0.95**6)
    assert scales['decode_head.pixel_decoder.level_encoding.weight'] == \
        pytest.approx(0.95**6)
    assert scales['decode_head.transformer_decoder.post_norm.weight'] == 1.0


def test_dino_internimage_demo_trains_and_evaluates(coco_root, tmp_path):
    cfg = small(DET_DEMO, tmp_path, coco_root, iters=3, num_val=4)
    cfg.val_evaluator.ann_file = coco_root + \
        '/annotations/instances_val.json'
    cfg.test_evaluator = cfg.val_evaluator
    runner, metrics, losses = run(cfg)
    model = runner.model
    assert type(model).__name__ == 'DINO'
    assert type(model.backbone).__name__ == 'InternImage'
    assert model.backbone.out_indices == (1, 2, 3)
    check_losses(losses, 3)
    assert any('dn_loss' in k for k in losses[0])
    assert -1.0 <= metrics['coco/bbox_mAP'] <= 1.0
