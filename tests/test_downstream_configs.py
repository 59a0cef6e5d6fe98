"""Downstream demo configs train and evaluate on CPU, from converted M3I
weights, in-process and through mmseg's own training script."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS, DefaultScope
from mmengine.runner import save_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint
from mmpretrain.registry import MODELS

from conftest import REPO, config_path, load_script

FT_DEMO = config_path('downstream', 'imagenet', 'vit-tiny_m3i-ft_demo.py')
LINEAR_DEMO = config_path('downstream', 'imagenet',
                          'vit-tiny_m3i-linear_demo.py')
SEG_DEMO = config_path('downstream', 'ade20k', 'upernet_vit-tiny_m3i_demo.py')
PRETRAIN_DEMO = config_path('pretrain', 'm3i_vit-tiny_demo.py')
LAYERS = 4  # depth of the demo ViT


@pytest.fixture(scope='module')
def m3i_demo_model():
    """The M3I model of the demo pre-training config (random weights)."""
    torch.manual_seed(0)
    cfg = Config.fromfile(PRETRAIN_DEMO)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def converted(m3i_demo_model, tmp_path, **kwargs):
    conv = load_script('tools', 'model_converters', 'm3i_to_downstream.py')
    out = str(tmp_path / 'm3i_backbone.pth')
    save_checkpoint(
        dict(state_dict=conv.convert(m3i_demo_model.state_dict(), **kwargs)),
        out)
    return dict(type='Pretrained', checkpoint=out, prefix='backbone.')


def small(cfg_path, work_dir, data_root, iters, num_val):
    """The demo config with fewer iterations and validation images."""
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = str(work_dir)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.val_dataloader.dataset.indices = num_val
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = iters
    cfg.log_level = 'WARNING'
    return cfg


class Probe(Hook):
    """Records the model before training and the validation metrics."""

    def __init__(self):
        self.before, self.metrics = None, None

    def before_train(self, runner):
        self.before = {
            k: v.detach().clone()
            for k, v in runner.model.state_dict().items()
        }

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = metrics


def train(cfg):
    runner = RUNNERS.build(cfg)
    probe = Probe()
    runner.register_hook(probe, priority='LOWEST')
    runner.train()
    return runner, probe


def lr_scales(runner):
    groups = runner.optim_wrapper.optimizer.param_groups
    return {g['param_name']: g['lr_scale'] for g in groups}


def test_finetune_demo_from_m3i_weights(demo_root, tmp_path, m3i_demo_model):
    cfg = small(FT_DEMO, tmp_path, demo_root, iters=6, num_val=128)
    cfg.model.backbone.init_cfg = converted(m3i_demo_model, tmp_path)
    runner, probe = train(cfg)
    # The M3I online encoder was loaded before training.
    for key in ('patch_embed.projection.weight', 'layers.3.attn.qkv.weight',
                'pos_embed'):
        assert torch.equal(probe.before['backbone.' + key],
                           m3i_demo_model.backbone.state_dict()[key])
    # Layer-wise lr decay 0.65 over 4 layers: embeddings 0.65^5, head 1.
    scales = lr_scales(runner)
    assert scales['backbone.patch_embed.projection.weight'] == \
        pytest.approx(0.65**5)
    assert scales['backbone.layers.3.ffn.layers.1.weight'] == \
        pytest.approx(0.65)
    assert scales['head.fc.weight'] == 1.0
    augments = runner.model.data_preprocessor.batch_augments.augments
    assert [type(a).__name__ for a in augments] == ['Mixup', 'CutMix']
    assert 0.0 <= probe.metrics['accuracy/top1'] <= 100.0


def test_linear_demo_keeps_the_backbone_frozen(demo_root, tmp_path,
                                               m3i_demo_model):
    cfg = small(LINEAR_DEMO, tmp_path, demo_root, iters=6, num_val=128)
    cfg.model.backbone.init_cfg = converted(m3i_demo_model, tmp_path)
    runner, probe = train(cfg)
    assert type(runner.optim_wrapper.optimizer).__name__ == 'LARS'
    after = runner.model.state_dict()
    backbone = [k for k in after if k.startswith('backbone.')]
    assert backbone and all(
        torch.equal(after[k], probe.before[k]) for k in backbone)
    assert torch.equal(probe.before['backbone.layers.0.attn.qkv.weight'],
                       m3i_demo_model.backbone.layers[0].attn.qkv.weight)
    assert not torch.equal(after['head.fc.weight'],
                           probe.before['head.fc.weight'])
    assert 0.0 <= probe.metrics['accuracy/top1'] <= 100.0


def test_segmentation_demo_from_m3i_weights(ade_root, tmp_path,
                                            m3i_demo_model):
    cfg = small(SEG_DEMO, tmp_path, ade_root, iters=4, num_val=8)
    cfg.model.backbone.init_cfg = converted(
        m3i_demo_model, tmp_path, img_size=64, rel_pos_heads=4)
    runner, probe = train(cfg)
    before = probe.before
    # pos_embed resized from 8x8 to 16x16 patches, zero relative tables.
    assert before['backbone.pos_embed'].shape == (1, 16 * 16 + 1, 64)
    table = before['backbone.layers.2.attn.relative_position_bias_table']
    assert table.shape == (31 * 31 + 3, 4) and not table.any()
    assert torch.equal(before['backbone.layers.2.attn.qkv.bias'],
                       m3i_demo_model.backbone.layers[2].attn.qkv.bias)
    # mmseg's layer-wise decay (0.65) reaches the BEiTViT backbone.
    groups = runner.optim_wrapper.optimizer.param_groups
    scale = {
        name: g['lr_scale']
        for g in groups for name in g['param_names']
    }
    assert scale['backbone.patch_embed.projection.weight'] == \
        pytest.approx(0.65**(LAYERS + 1))
    assert scale['decode_head.conv_seg.weight'] == 1.0
    assert 0.0 <= probe.metrics['mIoU'] <= 100.0


def test_mmseg_train_script_registers_our_modules_via_custom_imports(
        ade_root, tmp_path, m3i_demo_model):
    """A user's command: mmseg's tools/train.py, our config, converted M3I
    weights through load_from."""
    import mmseg
    script = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools',
                      'train.py')
    weights = converted(
        m3i_demo_model, tmp_path, img_size=64, rel_pos_heads=4)['checkpoint']
    work_dir = tmp_path / 'work'
    res = subprocess.run(
        [
            sys.executable, script, SEG_DEMO, '--work-dir',
            str(work_dir), '--cfg-options', f'load_from={weights}',
            f'train_dataloader.dataset.data_root={ade_root}',
            f'val_dataloader.dataset.data_root={ade_root}',
            f'test_dataloader.dataset.data_root={ade_root}',
            'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
            'test_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            'val_dataloader.persistent_workers=False',
            'test_dataloader.persistent_workers=False',
            'train_dataloader.batch_size=2',
            'val_dataloader.dataset.indices=4', 'train_cfg.max_iters=2',
            'train_cfg.val_interval=2'
        ],
        # Only PYTHONPATH, as a user's checkout: no import of m3i_mm here.
        env=dict(os.environ, PYTHONPATH=REPO),
        cwd=str(tmp_path),
        capture_output=True,
        text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'mIoU' in res.stdout + res.stderr
    # Through m3i_mm's allow-listed loader: real mmdet/mmseg checkpoints load.
    trained = _load_checkpoint(str(work_dir / 'iter_2.pth'),
                               map_location='cpu')['state_dict']
    # Two warm-up steps (lr <= 2.5e-5) barely move the loaded M3I weights.
    start = m3i_demo_model.backbone.patch_embed.projection.weight
    moved = trained['backbone.patch_embed.projection.weight'] - start
    assert moved.abs().max() < 1e-3


def test_real_configs_hold_the_paper_hyper_parameters():
    """The merged real-scale configs carry Tables 8, 9 and 12."""
    ft = Config.fromfile(config_path(
        'downstream', 'imagenet',
        'vit-base-p16_m3i-ft_8xb128-coslr-100e_in1k.py'))
    opt = ft.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay, tuple(opt.betas)) == \
        ('AdamW', 2e-3, 0.1, (0.9, 0.999))
    assert ft.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.65
    assert ft.train_dataloader.batch_size * 8 == 1024
    assert ft.train_cfg.max_epochs == 100
    assert ft.param_scheduler[0].end == 5  # warm-up epochs
    assert ft.model.backbone.drop_path_rate == 0.1
    assert ft.model.head.loss.label_smooth_val == 0.1
    assert [(a.type, a.alpha) for a in ft.model.train_cfg.augments] == [
        ('Mixup', 0.8), ('CutMix', 1.0)]
    steps = {t.type: t for t in ft.train_dataloader.dataset.pipeline}
    assert (steps['RandAugment'].magnitude_level,
            steps['RandAugment'].magnitude_std) == (9, 0.5)
    assert steps['RandomErasing'].erase_prob == 0.25

    lin = Config.fromfile(config_path(
        'downstream', 'imagenet',
        'vit-base-p16_m3i-linear_16xb1024-coslr-90e_in1k.py'))
    opt = lin.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('LARS', 3.2, 0.0)
    assert lin.train_dataloader.batch_size * 16 == 16384
    assert lin.train_cfg.max_epochs == 90
    assert lin.param_scheduler[0].end == 10
    assert lin.model.backbone.frozen_stages == 12

    seg = Config.fromfile(config_path(
        'downstream', 'ade20k',
        'upernet_vit-base-p16_m3i_8xb2-160k_ade20k-512x512.py'))
    opt = seg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay, tuple(opt.betas)) == \
        ('AdamW', 1e-4, 0.05, (0.9, 0.999))
    assert seg.train_dataloader.batch_size * 8 == 16
    assert seg.train_cfg.max_iters == 160000
    assert seg.param_scheduler[0].end == 1500
    assert seg.param_scheduler[1].power == 1.0  # linear decay
    assert seg.model.backbone.drop_path_rate == 0.1
    assert seg.model.backbone.use_rel_pos_bias is True
    assert tuple(seg.model.backbone.img_size) == (512, 512)
    steps = [t.type for t in seg.train_dataloader.dataset.pipeline]
    assert {'RandomCrop', 'RandomFlip', 'PhotoMetricDistortion'} <= set(steps)


def test_internimage_t_demo_trains_and_evaluates_on_cpu(demo_root, tmp_path):
    cfg = small(
        config_path('downstream', 'internimage', 'internimage-t_demo.py'),
        tmp_path, demo_root, iters=3, num_val=64)
    cfg.train_dataloader.batch_size = 8
    runner, probe = train(cfg)
    from m3i_mm.ops import DCNv3
    assert any(isinstance(m, DCNv3) for m in runner.model.modules())
    after = runner.model.state_dict()
    key = 'backbone.stages.3.blocks.0.dcn.output_proj.weight'
    assert key in after and not torch.equal(after[key], probe.before[key])
    assert 0.0 <= probe.metrics['accuracy/top1'] <= 100.0
