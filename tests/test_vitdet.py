"""ViTDet backbone, SimpleFPN neck, M3I -> ViTDet conversion, COCO demo."""
import copy
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS, DefaultScope
from mmengine.runner import load_checkpoint, save_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint
from mmpretrain.models.utils import resize_pos_embed

from conftest import REPO, config_path, load_script
from m3i_mm.models.backbones.vitdet import ViTDet, ViTDetLayer
from m3i_mm.models.necks.simple_fpn import SimpleFPN

DIMS, HEADS, LAYERS, PATCH = 64, 4, 4, 4  # the tiny demo ViT
TINY = dict(embed_dims=DIMS, num_layers=LAYERS, num_heads=HEADS,
            feedforward_channels=DIMS * 4)
COCO_DEMO = config_path('downstream', 'coco',
                        'mask-rcnn_vitdet-tiny_m3i_demo.py')
COCO_REAL = config_path('downstream', 'coco',
                        'mask-rcnn_vitdet-b_m3i_lsj-1024-100e_coco.py')
LVIS_REAL = config_path('downstream', 'lvis',
                        'mask-rcnn_vitdet-b_m3i_lsj-1024-100e_lvis.py')


conv = load_script('tools', 'model_converters', 'm3i_to_downstream.py')


def tiny_vitdet(**kwargs):
    torch.manual_seed(0)
    cfg = dict(arch=TINY, img_size=32, patch_size=PATCH, window_size=4,
               global_attn_indexes=[1, 3], drop_path_rate=0.)
    cfg.update(kwargs)
    model = ViTDet(**cfg)
    model.init_weights()
    model.eval()
    return model


def test_vitdet_b_matches_the_paper_design():
    with torch.device('meta'):
        model = ViTDet(arch='base')
    assert model.global_attn_indexes == [2, 5, 8, 11]
    assert model.window_layers == [0, 1, 3, 4, 6, 7, 9, 10]
    assert all(isinstance(layer, ViTDetLayer) for layer in model.layers)
    assert model.pos_embed.shape == (1, 64, 64, 768)  # 1024 / 16
    # Decomposed tables: window blocks (2*14-1), global blocks (2*64-1).
    assert model.layers[0].attn.rel_pos_h.shape == (27, 64)
    assert model.layers[2].attn.rel_pos_w.shape == (127, 64)
    # Stochastic depth 0.1, linear, on both residual branches.
    assert model.layers[0].drop_path.__class__.__name__ == 'Identity'
    assert model.layers[11].drop_path.drop_prob == pytest.approx(0.1)
    assert model.layers[11].ffn.dropout_layer.drop_prob == pytest.approx(0.1)
    assert not hasattr(model, 'channel_reduction')
    with pytest.raises(TypeError, match='out_channels'):
        ViTDet(out_channels=256)
    with pytest.raises(ValueError, match=r'global_attn_indexes \[7\]'):
        ViTDet(arch=TINY, img_size=32, patch_size=4, global_attn_indexes=[7])


def test_backbone_stride_and_window_locality():
    model = tiny_vitdet(global_attn_indexes=[])  # every block windowed
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        (out, ) = model(x)
        assert out.shape == (1, DIMS, 8, 8)  # stride = patch size
        # Windows of 4x4 tokens = 16x16 pixels: changing the top-left
        # window's pixels leaves the other three windows' features alone.
        y = x.clone()
        y[..., :16, :16] += 1.0
        (out2, ) = model(y)
    changed = (out2 - out).abs().amax(dim=1)[0] > 1e-6
    assert changed[:4, :4].all()
    assert not changed[4:, :].any() and not changed[:, 4:].any()
    # A global block mixes all tokens.
    model = tiny_vitdet(global_attn_indexes=[3])
    with torch.no_grad():
        changed = (model(y)[0] - model(x)[0]).abs().amax(dim=1)[0] > 1e-6
    assert changed.all()


def test_window_of_the_whole_grid_equals_global_attention():
    windowed = tiny_vitdet(window_size=8, global_attn_indexes=[])
    glob = tiny_vitdet(window_size=0)
    glob.load_state_dict(windowed.state_dict())  # same table shapes (15)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(windowed(x)[0], glob(x)[0], atol=1e-6)
        # A smaller window (padded 3 -> 2 windows of 5) really differs.
        small = tiny_vitdet(window_size=5, global_attn_indexes=[])
        assert (small(x)[0] - glob(x)[0]).abs().max() > 1e-3


def test_simple_fpn_strides_channels_and_extra_level():
    neck = SimpleFPN(backbone_channel=DIMS, in_channels=[16, 32, 64, 64],
                     out_channels=32, num_outs=5)
    x = torch.randn(2, DIMS, 8, 8)  # a stride-16 map of a 128x128 image
    outs = neck((x, ))
    assert [tuple(o.shape) for o in outs] == [
        (2, 32, 32, 32), (2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4),
        (2, 32, 2, 2)]  # strides 4, 8, 16, 32, 64
    assert torch.equal(outs[4], outs[3][..., ::2, ::2])  # 1x1 max-pool, s2
    assert type(neck.lateral_convs[0].norm).__name__ == 'LayerNorm2d'
    gn = SimpleFPN(DIMS, [16, 32, 64, 64], 32, num_outs=4,
                   norm_cfg=dict(type='GN', num_groups=8))
    assert len(gn((x, ))) == 4
    with pytest.raises(ValueError, match=r'\[16, 32, 64, 64\]'):
        SimpleFPN(DIMS, [64, 64, 64, 64])
    with pytest.raises(ValueError, match='expected 64 channels'):
        neck((torch.randn(1, 32, 8, 8), ))


@pytest.fixture(scope='module')
def m3i_backbone():
    """The demo M3I ViT (random weights) as the pre-trained encoder."""
    from mmpretrain.registry import MODELS
    torch.manual_seed(1)
    cfg = Config.fromfile(config_path('pretrain', 'm3i_vit-tiny_demo.py'))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        vit = MODELS.build(cfg.model.backbone)
    vit.init_weights()
    with torch.no_grad():  # make the final norm and biases non-trivial
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vit.eval()  # mmpretrain's train() returns None
    return vit


def test_converter_round_trip(m3i_backbone, tmp_path):
    state = conv.convert(
        {'backbone.' + k: v for k, v in m3i_backbone.state_dict().items()},
        layout='vitdet', img_size=64, rel_pos_heads=HEADS,
        global_attn_indexes=[1, 3], window_size=4)
    assert 'backbone.cls_token' not in state and 'backbone.ln1.weight' \
        not in state
    table = state['backbone.layers.0.attn.rel_pos_h']
    assert table.shape == (7, DIMS // HEADS) and not table.any()
    assert state['backbone.layers.1.attn.rel_pos_w'].shape == (31, 16)
    pos = m3i_backbone.pos_embed.detach()
    expected = resize_pos_embed(pos, (8, 8), (16, 16), mode='bicubic',
                                num_extra_tokens=1)[:, 1:]
    assert torch.equal(state['backbone.pos_embed'],
                       expected.reshape(1, 16, 16, DIMS))
    path = str(tmp_path / 'vitdet.pth')
    save_checkpoint(dict(state_dict=state), path)
    vitdet = tiny_vitdet(img_size=64, window_size=4,
                         global_attn_indexes=[1, 3])
    load_checkpoint(vitdet, path, strict=True,
                    revise_keys=[(r'^backbone\.', '')])

    # Comparable reference: M3I's ViT run without its class token and
    # final norm (ViTDet has neither), on a 32x32 input = one 8x8 window
    # grid at the pre-training size. Zero relative tables add nothing and a
    # window covering the whole grid is global attention, so both compute
    # the same function; only the attention kernels differ (SDPA vs matmul).
    ref = copy.deepcopy(m3i_backbone)
    ref.cls_token, ref.num_extra_tokens, ref.final_norm = None, 0, False
    ref.pos_embed = torch.nn.Parameter(pos[:, 1:])
    state8 = conv.convert(
        {'backbone.' + k: v for k, v in m3i_backbone.state_dict().items()},
        layout='vitdet', rel_pos_heads=HEADS, window_size=0,
        global_attn_indexes=[], prefix='')
    same = tiny_vitdet(img_size=32, window_size=0)
    same.load_state_dict(state8, strict=True)
    # The same with ViTDet's layout (global blocks 1, 3) and one 8x8 window.
    one_window = tiny_vitdet(img_size=32, window_size=8,
                             global_attn_indexes=[1, 3])
    one_window.load_state_dict(conv.convert(
        {'backbone.' + k: v for k, v in m3i_backbone.state_dict().items()},
        layout='vitdet', rel_pos_heads=HEADS, window_size=8,
        global_attn_indexes=[1, 3], prefix=''), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expect = ref(x)[-1]  # max |value| about 7
        for model in (same, one_window):
            diff = (model(x)[-1] - expect).abs().max().item()
            assert diff < 1e-5, diff  # measured 2.1e-6
        # At a detection size of 64 (16x16 grid) the converter's resized
        # pos_embed equals the one M3I's ViT interpolates on the fly (same
        # bicubic resize): a 16x16 window model matches it there too.
        big = tiny_vitdet(img_size=64, window_size=16,
                          global_attn_indexes=[1, 3])
        big.load_state_dict(conv.convert(
            {'backbone.' + k: v
             for k, v in m3i_backbone.state_dict().items()},
            layout='vitdet', img_size=64, rel_pos_heads=HEADS,
            window_size=16, global_attn_indexes=[1, 3], prefix=''),
            strict=True)
        x64 = torch.randn(1, 3, 64, 64,
                          generator=torch.Generator().manual_seed(4))
        assert (big(x64)[-1] - ref(x64)[-1]).abs().max() < 1e-5
        # The window-4 model differs there (windows are local).
        assert (vitdet(x64)[-1] - ref(x64)[-1]).abs().max() > 1e-3
        # With its class token M3I's ViT computes something else.
        full = copy.deepcopy(m3i_backbone)
        full.final_norm = False
        assert (full(x)[-1] - expect).abs().max() > 1e-3
    with pytest.raises(KeyError, match='gamma1'):
        conv.convert({'backbone.pos_embed': pos,
                      'backbone.cls_token': pos[:, :1],
                      'backbone.patch_embed.projection.weight':
                      torch.zeros(DIMS, 3, 4, 4),
                      'backbone.layers.0.attn.gamma1.weight': pos},
                     layout='vitdet')
    with pytest.raises(ValueError, match='pass global_attn_indexes'):
        conv.convert(
            {'backbone.' + k: v
             for k, v in m3i_backbone.state_dict().items()},
            layout='vitdet', rel_pos_heads=HEADS)


def demo_weights(m3i_backbone, tmp_path):
    """The demo M3I ViT converted for the demo ViTDet (96x96, window 8)."""
    state = conv.convert(
        {'backbone.' + k: v for k, v in m3i_backbone.state_dict().items()},
        layout='vitdet', img_size=96, rel_pos_heads=HEADS, window_size=8,
        global_attn_indexes=[1, 3])
    path = str(tmp_path / 'm3i_vitdet-tiny_96.pth')
    save_checkpoint(dict(state_dict=state), path)
    return path


class Probe(Hook):
    """Records the model before training, the losses and the metrics."""

    def __init__(self):
        self.before, self.losses, self.metrics = None, [], None

    def before_train(self, runner):
        self.before = {
            k: v.detach().clone()
            for k, v in runner.model.state_dict().items()
        }

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses.append(float(outputs['loss']))

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = metrics


def test_coco_demo_trains_and_evaluates_from_m3i_weights(
        coco_root, tmp_path, m3i_backbone):
    cfg = Config.fromfile(COCO_DEMO)
    cfg.work_dir = str(tmp_path)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = coco_root
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.val_evaluator.ann_file = coco_root + '/annotations/instances_val.json'
    cfg.val_dataloader.dataset.indices = 4
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 3
    cfg.log_level = 'WARNING'
    cfg.model.backbone.init_cfg = dict(
        type='Pretrained', checkpoint=demo_weights(m3i_backbone, tmp_path),
        prefix='backbone.')
    # The runner makes 'mmdet' the default scope; restore it afterwards so
    # later tests build in their own scope.
    with DefaultScope.overwrite_default_scope('mmdet'):
        runner = RUNNERS.build(cfg)
        probe = Probe()
        runner.register_hook(probe, priority='LOWEST')
        runner.train()
    # The converted M3I weights were loaded strictly where they exist.
    before = probe.before
    for key in ('patch_embed.projection.weight', 'layers.3.attn.qkv.bias'):
        assert torch.equal(before['backbone.' + key],
                           m3i_backbone.state_dict()[key])
    assert not before['backbone.layers.0.attn.rel_pos_h'].any()
    assert before['backbone.pos_embed'].shape == (1, 24, 24, DIMS)
    assert len(probe.losses) == 3 and all(
        torch.isfinite(torch.tensor(probe.losses)))
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'):
        assert 0.0 <= probe.metrics[key] <= 1.0
    # Layer-wise lr decay 0.7 over 4 blocks: embeddings 0.7^5, block i
    # 0.7^(4 - i), neck and heads 1; no decay on norms and pos_embed.
    groups = {
        g['param_name']: g
        for g in runner.optim_wrapper.optimizer.param_groups
    }
    assert groups['backbone.pos_embed']['lr_scale'] == pytest.approx(0.7**5)
    assert groups['backbone.layers.3.attn.qkv.weight']['lr_scale'] == \
        pytest.approx(0.7)
    assert groups['backbone.layers.0.attn.qkv.weight']['lr_scale'] == \
        pytest.approx(0.7**4)
    assert groups['neck.fpn2.weight']['lr_scale'] == 1.0
    assert groups['roi_head.bbox_head.fc_cls.weight']['lr_scale'] == 1.0
    assert groups['backbone.pos_embed']['weight_decay'] == 0.0
    assert groups['backbone.layers.0.ln1.weight']['weight_decay'] == 0.0
    assert groups['backbone.layers.0.attn.qkv.weight']['weight_decay'] == \
        pytest.approx(0.1)


@pytest.mark.parametrize('launcher', ['script', 'mim'])
def test_mmdet_train_script_registers_our_modules_via_custom_imports(
        coco_root, tmp_path, m3i_backbone, launcher):
    """A user's command: mmdet's tools/train.py (directly, or through
    ``mim train mmdetection``: on the OneDL line ``mmdet`` is ambiguous in
    mim's table, it also matches mmdet3d), our demo config, converted M3I
    weights through load_from."""
    import mmdet
    command = [
        sys.executable,
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    ]
    if launcher == 'mim':
        command = [
            osp.join(osp.dirname(sys.executable), 'mim'), 'train',
            'mmdetection'
        ]
    weights = demo_weights(m3i_backbone, tmp_path)
    ann = coco_root + '/annotations/instances_val.json'
    work_dir = tmp_path / 'work'
    options = [
        f'load_from={weights}', 'train_cfg.max_iters=2',
        'train_cfg.val_interval=2', 'train_dataloader.batch_size=2',
        'val_dataloader.dataset.indices=4', f'val_evaluator.ann_file={ann}'
    ]
    for loader in ('train', 'val', 'test'):
        options += [
            f'{loader}_dataloader.dataset.data_root={coco_root}',
            f'{loader}_dataloader.num_workers=0',
            f'{loader}_dataloader.persistent_workers=False'
        ]
    res = subprocess.run(
        command + [COCO_DEMO, '--work-dir',
                   str(work_dir), '--cfg-options'] + options,
        # Only PYTHONPATH, as a user's checkout: no import of m3i_mm here.
        env=dict(os.environ, PYTHONPATH=REPO),
        cwd=str(tmp_path),
        capture_output=True,
        text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'coco/segm_mAP' in res.stdout + res.stderr
    # Through m3i_mm's allow-listed loader: real mmdet/mmseg checkpoints load.
    trained = _load_checkpoint(str(work_dir / 'iter_2.pth'),
                               map_location='cpu')['state_dict']
    # Two warm-up steps (lr <= 2e-7 x layer decay) barely move the weights.
    start = m3i_backbone.patch_embed.projection.weight
    moved = trained['backbone.patch_embed.projection.weight'] - start
    assert moved.abs().max() < 1e-4


def test_real_configs_hold_the_paper_hyper_parameters():
    """Tables 10 and 11 in the merged real-scale configs."""
    coco = Config.fromfile(COCO_REAL)
    lvis = Config.fromfile(LVIS_REAL)
    for cfg, lr in ((coco, 1e-4), (lvis, 2e-4)):
        opt = cfg.optim_wrapper.optimizer
        assert (opt.type, opt.lr, opt.weight_decay, tuple(opt.betas)) == \
            ('AdamW', lr, 0.1, (0.9, 0.999))
        assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.7
        assert cfg.train_dataloader.batch_size * 8 == 64
        assert cfg.param_scheduler[0].end == 250
        assert cfg.param_scheduler[1].type == 'MultiStepLR'
        backbone = cfg.model.backbone
        assert (backbone.type, backbone.drop_path_rate, backbone.use_rel_pos,
                backbone.window_size, tuple(backbone.img_size)) == \
            ('ViTDet', 0.1, True, 14, (1024, 1024))
        assert backbone.global_attn_indexes == [2, 5, 8, 11]
        assert cfg.model.neck.type == 'SimpleFPN'
    # 100 epochs: COCO 118k and LVIS 100k images at batch 64.
    assert coco.train_cfg.max_iters == 184375
    assert lvis.train_cfg.max_iters == 156250
    steps = {t.type: t for t in coco.train_dataloader.dataset.pipeline}
    assert steps['RandomResize'].ratio_range == (0.1, 2.0)
    assert tuple(steps['RandomCrop'].crop_size) == (1024, 1024)
    lvis_data = lvis.train_dataloader.dataset
    assert (lvis_data.type, lvis_data.oversample_thr,
            lvis_data.dataset.type) == ('ClassBalancedDataset', 1e-3,
                                        'LVISV1Dataset')
    assert lvis.model.roi_head.bbox_head.num_classes == 1203
    loss_cls = lvis.model.roi_head.bbox_head.loss_cls
    assert (loss_cls.type, loss_cls.num_classes, loss_cls.num_fed_classes,
            loss_cls.freq_weight_power) == ('FederatedSigmoidLoss', 1203, 50,
                                            0.5)
    assert (lvis.model.test_cfg.rcnn.score_thr,
            lvis.model.test_cfg.rcnn.max_per_img) == (0.02, 300)
    assert lvis.val_evaluator.type == 'LVISMetric'
