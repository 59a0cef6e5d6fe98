"""Issue 21, items 6 and 7: the views that image targets see.

Pixel targets of the inter-view rows (Table 2 g, j) and frozen teachers
take the target view before its photometric augmentation (crop, resize and
flip only); a frozen teacher gets its own normalisation and input size
(CLIP's in the configs, as FD and MILAN feed CLIP).
"""
import copy
import os.path as osp
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import m3i_mm  # noqa: F401
from m3i_mm.datasets.transforms import M3IViews
from m3i_mm.models.target_encoders import frozen_image

from conftest import REPO, TINY_ARCH, TINY_DIMS, TINY_PATCH, config_path

sys.path.insert(0, osp.join(REPO, 'benchmarks'))
import framework_demo  # noqa: E402

SIZE = 16
GRID = SIZE // TINY_PATCH
CLIP_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_STD = [68.5005327, 66.6321579, 70.32316805]
GEOMETRIC_ROWS = ('novel-view-synthesis', 'siamese-im-pixel')
TEACHER_ROWS = ('dense-distillation_frozen-teacher',
                'mim-feature_frozen-teacher')
# Solarize at threshold 0 inverts every pixel: x -> 255 - x.
INVERT = [dict(type='Solarize', thr=0, prob=1.0)]


def row_config(row: str) -> Config:
    return Config.fromfile(config_path('pretrain', 'table5',
                                       f'{row}_vitb.py'))


def random_image(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)


# --------------------------------------------------------------------------
# (b) M3IViews' third image: view 0's geometry, none of its photometry
# --------------------------------------------------------------------------
def test_views_geometric_target_view_is_view0_before_photometry():
    img = random_image(0)
    common = dict(size=SIZE, crop_scale=(0.3, 0.7), flip_prob=0.5)
    np.random.seed(3)
    plain = M3IViews(**common)(dict(img=img.copy()))
    np.random.seed(3)
    out = M3IViews(geometric_target_view=True,
                   target_view_transforms=INVERT, **common)(
                       dict(img=img.copy()))
    target, other, geometric = out['img']
    # Same crops and flips (the geometric copy draws no random numbers).
    np.testing.assert_array_equal(out['view_boxes'], plain['view_boxes'])
    np.testing.assert_array_equal(out['view_flips'], plain['view_flips'])
    np.testing.assert_array_equal(geometric, plain['img'][0])
    np.testing.assert_array_equal(target, 255 - geometric)  # photometric
    np.testing.assert_array_equal(other, plain['img'][1])


def test_views_geometric_target_view_is_the_flipped_crop():
    img = random_image(1, SIZE, SIZE)
    out = M3IViews(size=SIZE, crop_scale=(1., 1.), crop_ratio=(1., 1.),
                   flip_prob=1., geometric_target_view=True,
                   target_view_transforms=INVERT)(dict(img=img))
    np.testing.assert_array_equal(out['img'][2], img[:, ::-1])
    np.testing.assert_array_equal(out['img'][0], 255 - img[:, ::-1])


# --------------------------------------------------------------------------
# The data preprocessor: batched and per-image augmentation
# --------------------------------------------------------------------------
def preprocessor(**kwargs):
    return MODELS.build(dict(type='M3IDataPreprocessor', mean=[127.5] * 3,
                             std=[127.5] * 3, to_rgb=False, **kwargs))


def test_preprocessor_keeps_target_view_before_batched_augmentation():
    raw = [torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
           for _ in range(2)]
    data = preprocessor(view_transforms=[INVERT, None],
                        geometric_target_view=True)(
                            dict(inputs=list(raw)), training=True)
    target, other, geometric = data['inputs']
    norm = (raw[0].float() - 127.5) / 127.5
    torch.testing.assert_close(geometric, norm)
    torch.testing.assert_close(target, -norm, atol=1e-5, rtol=0)
    torch.testing.assert_close(other, (raw[1].float() - 127.5) / 127.5)


def test_preprocessor_takes_the_pipelines_geometric_view():
    raw = [torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
           for _ in range(3)]
    data = preprocessor(view_transforms=[INVERT, None],
                        geometric_target_view=True)(
                            dict(inputs=list(raw)), training=True)
    assert len(data['inputs']) == 3
    torch.testing.assert_close(data['inputs'][2],
                               (raw[2].float() - 127.5) / 127.5)
    # Per-image augmentation: 2 views cannot say what view 0 was before.
    with pytest.raises(ValueError, match='M3IViews\\(geometric_target_view'):
        preprocessor(geometric_target_view=True)(
            dict(inputs=raw[:2]), training=True)
    with pytest.raises(ValueError, match='got 4'):
        preprocessor(geometric_target_view=True)(
            dict(inputs=raw + raw[:1]), training=True)


# --------------------------------------------------------------------------
# (c) FrozenImageTarget's own preprocessing
# --------------------------------------------------------------------------
def frozen_target(**kwargs):
    backbone = MODELS.build(dict(type='VisionTransformer', arch=TINY_ARCH,
                                 img_size=SIZE, patch_size=TINY_PATCH,
                                 out_type='featmap'))
    target = MODELS.build(dict(type='FrozenImageTarget', checkpoint='t.pth',
                               backbone=backbone, **kwargs))
    target.loaded.fill_(True)  # its weights do not matter here
    return target


def seen_by_teacher(target, images, monkeypatch):
    seen = []

    def record(encoder, x):
        seen.append(x)
        return x.flatten(2).transpose(1, 2)  # identity-like encoder

    monkeypatch.setattr(frozen_image, 'backbone_tokens', record)
    target(images)
    return seen[0]


def test_frozen_target_gets_its_own_normalisation(monkeypatch):
    source_mean, source_std = [123.675, 116.28, 103.53], [58.4, 57.1, 57.4]
    target = frozen_target(mean=CLIP_MEAN, std=CLIP_STD,
                           source_mean=source_mean, source_std=source_std)
    raw = torch.rand(2, 3, SIZE, SIZE) * 255

    def chan(v):
        return torch.tensor(v).view(1, 3, 1, 1)

    student = (raw - chan(source_mean)) / chan(source_std)
    seen = seen_by_teacher(target, student, monkeypatch)
    torch.testing.assert_close(seen, (raw - chan(CLIP_MEAN)) / chan(CLIP_STD),
                               atol=1e-4, rtol=0)


def test_frozen_target_resizes_to_its_size(monkeypatch):
    target = frozen_target(mean=CLIP_MEAN, std=CLIP_STD,
                           source_mean=[127.5] * 3, source_std=[127.5] * 3,
                           size=24)
    raw = torch.rand(2, 3, SIZE, SIZE) * 255
    student = (raw - 127.5) / 127.5
    seen = seen_by_teacher(target, student, monkeypatch)
    resized = F.interpolate(raw, size=(24, 24), mode='bicubic',
                            align_corners=False, antialias=True)
    expected = (resized - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert seen.shape == (2, 3, 24, 24)
    torch.testing.assert_close(seen, expected, atol=1e-4, rtol=0)
    # A flat grey image stays that grey at any size.
    flat = seen_by_teacher(target, torch.zeros(1, 3, SIZE, SIZE),
                           monkeypatch)
    torch.testing.assert_close(
        flat[0, :, 5, 7],
        (127.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))


def test_frozen_target_refuses_inputs_that_misplace_or_miscolour():
    # Same token count at another aspect ratio: targets on the wrong patches.
    squashed = frozen_target(size=(SIZE // 2, SIZE * 2))
    with pytest.raises(ValueError, match='aspect ratio'):
        squashed(torch.zeros(1, 3, SIZE, SIZE))
    four = frozen_target(mean=[1.] * 4, std=[1.] * 4, source_mean=[1.] * 4,
                         source_std=[1.] * 4)
    with pytest.raises(ValueError, match='4 values for 3-channel'):
        four(torch.zeros(1, 3, SIZE, SIZE))


@pytest.mark.parametrize('kwargs,match', [
    (dict(mean=CLIP_MEAN, std=CLIP_STD), 'source_mean'),
    (dict(mean=CLIP_MEAN, std=CLIP_STD, source_mean=[1.] * 3,
          source_std=[1.] * 4), 'one value per channel'),
    (dict(size=0), 'size'),
    (dict(mean='clip', std=CLIP_STD, source_mean=[1.] * 3,
          source_std=[1.] * 3), 'mean'),
    (dict(mean=CLIP_MEAN, std=[0.] * 3, source_mean=[1.] * 3,
          source_std=[1.] * 3), r'image_target.std must be finite and '
     'positive'),
    (dict(mean=CLIP_MEAN, std=CLIP_STD, source_mean=[float('nan')] * 3,
          source_std=[1.] * 3), 'image_target.source_mean must be finite'),
    (dict(mean=[None] * 3, std=CLIP_STD, source_mean=[1.] * 3,
          source_std=[1.] * 3), 'image_target.mean must be a list of'),
    (dict(size=224.0), 'size'),
    (dict(size=True), 'size'),
])
def test_frozen_target_bad_preprocessing(kwargs, match):
    with pytest.raises(ValueError, match=match):
        frozen_target(**kwargs)


# --------------------------------------------------------------------------
# (a) Through the model: the target encodes the geometry-only view
# --------------------------------------------------------------------------
def tiny_row_model(row: str, teacher_size: int = SIZE):
    """The row's model at tiny size, view 0 inverted by the preprocessor."""
    cfg = copy.deepcopy(row_config(row).model.to_dict())
    cfg['data_preprocessor']['view_transforms'] = [INVERT, None]
    cfg['backbone'].update(arch=TINY_ARCH, img_size=SIZE,
                           patch_size=TINY_PATCH, drop_path_rate=0.0)
    cfg['mixer']['patch_size'] = TINY_PATCH
    target = cfg['image_target']
    pixels = target['type'] == 'PixelTarget'
    if pixels:
        target['patch_size'] = TINY_PATCH
    else:
        target['size'] = teacher_size
    cfg['image_decoder'].update(
        in_channels=TINY_DIMS, embed_dims=32, depth=1, num_heads=4,
        out_channels=TINY_PATCH**2 * 3 if pixels else TINY_DIMS)
    model = MODELS.build(cfg)
    if not pixels:
        model.image_target.loaded.fill_(True)  # random teacher weights
    return model


def raw_batch(n: int = 2):
    gen = torch.Generator().manual_seed(0)
    views = [torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=gen,
                           dtype=torch.uint8) for _ in range(2)]
    samples = []
    for i in range(n):
        sample = DataSample()
        mask = torch.zeros(GRID, GRID, dtype=torch.bool)
        mask[:GRID // 2] = True
        sample.set_field(mask, 'mask')
        sample.set_field(torch.tensor([[0., 0., 32., 32.],
                                       [4., 2., 28., 30.]]), 'view_boxes')
        sample.set_field(torch.tensor([False, i == 1]), 'view_flips')
        samples.append(sample)
    return dict(inputs=views, data_samples=samples)


def check_target_sees_view0_before_photometry(model, encoder):
    """One training step of ``model``: ``encoder`` got view 0 as the data
    preprocessor normalises it, without the inversion the input saw."""
    MessageHub.get_current_instance().update_info('max_iters', 100)
    seen = []
    encoder.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone()))
    batch = raw_batch()
    data = model.data_preprocessor(batch, training=True)
    losses = model(**data, mode='loss')
    assert all(torch.isfinite(v).all() for v in losses.values())
    mean = model.data_preprocessor.mean.view(1, 3, 1, 1)
    std = model.data_preprocessor.std.view(1, 3, 1, 1)
    rgb = batch['inputs'][0].float()[:, [2, 1, 0]]  # to_rgb
    torch.testing.assert_close(seen[0], (rgb - mean) / std)
    torch.testing.assert_close(data['inputs'][0],
                               (255 - rgb - mean) / std, atol=1e-4, rtol=0)


@pytest.mark.parametrize('row', GEOMETRIC_ROWS + TEACHER_ROWS)
def test_row_target_encodes_view0_before_photometry(row):
    model = tiny_row_model(row)
    check_target_sees_view0_before_photometry(model, model.image_target)


# A tokenizer is a frozen encoder too (Table 5, footnote 2): its own input.
TOKENIZER = dict(type='VQKD', num_embed=11, embed_dims=8,
                 quantize_kmeans_init=False,
                 encoder_config=dict(arch=TINY_ARCH, img_size=SIZE,
                                     patch_size=TINY_PATCH,
                                     out_type='featmap'))
# BEiT's dVAE input: mmpretrain's TwoNormDataPreprocessor second mean/std,
# 0-255 -> [0.1, 0.9].
DALLE_MEAN, DALLE_STD = [-31.875] * 3, [318.75] * 3


def token_target(**kwargs):
    target = MODELS.build(dict(type='DiscreteTokenTarget',
                               tokenizer=TOKENIZER, checkpoint='tok.pth',
                               **kwargs))
    target.loaded.fill_(True)  # random tokenizer weights
    return target


def seen_by_tokenizer(target, images):
    seen = []
    target.tokenizer.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone()))
    ids = target(images)
    assert ids.shape == (images.shape[0], GRID * GRID)
    return seen[0]


def test_tokenizer_gets_its_own_normalisation():
    target = token_target(mean=DALLE_MEAN, std=DALLE_STD,
                          source_mean=[127.5] * 3, source_std=[127.5] * 3)
    raw = torch.rand(2, 3, SIZE, SIZE) * 255
    seen = seen_by_tokenizer(target, (raw - 127.5) / 127.5)
    torch.testing.assert_close(seen, 0.1 + 0.8 * raw / 255, atol=1e-5,
                               rtol=0)
    plain = token_target()  # no preprocessing: the student's input itself
    images = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(seen_by_tokenizer(plain, images), images)


@pytest.mark.parametrize('kwargs,match', [
    (dict(mean=DALLE_MEAN, std=DALLE_STD), 'DiscreteTokenTarget needs'),
    (dict(size=(SIZE, 0)), 'size'),
])
def test_tokenizer_bad_preprocessing(kwargs, match):
    with pytest.raises(ValueError, match=match):
        token_target(**kwargs)


def test_tokenizer_encodes_view0_before_photometry():
    cfg = copy.deepcopy(row_config('mim-token').model.to_dict())
    cfg['data_preprocessor'].update(view_transforms=[INVERT, None],
                                    geometric_target_view=True)
    cfg['backbone'].update(arch=TINY_ARCH, img_size=SIZE,
                           patch_size=TINY_PATCH, drop_path_rate=0.0)
    cfg['mixer']['patch_size'] = TINY_PATCH
    cfg['image_target'].update(tokenizer=TOKENIZER, geometric_view=True)
    cfg['image_decoder'].update(in_channels=TINY_DIMS, embed_dims=32,
                                depth=1, num_heads=4, out_channels=11)
    model = MODELS.build(cfg)
    model.image_target.loaded.fill_(True)
    check_target_sees_view0_before_photometry(model,
                                              model.image_target.tokenizer)


# --------------------------------------------------------------------------
# (d) The configs and their demo twins
# --------------------------------------------------------------------------
@pytest.mark.parametrize('row', GEOMETRIC_ROWS + TEACHER_ROWS)
def test_row_configs_ask_for_the_geometric_view(row):
    model = row_config(row).model
    assert model.data_preprocessor.type == 'M3IDataPreprocessor'
    assert model.data_preprocessor.geometric_target_view is True
    assert model.image_target.geometric_view is True
    if row in TEACHER_ROWS:
        target = model.image_target
        assert target.type == 'FrozenImageTarget'
        assert target.size == 224
        assert target.mean == CLIP_MEAN and target.std == CLIP_STD
        assert target.source_mean == model.data_preprocessor.mean
        assert target.source_std == model.data_preprocessor.std


@pytest.mark.parametrize('row', GEOMETRIC_ROWS + TEACHER_ROWS)
def test_demo_twins_carry_the_geometric_view(row):
    specs = framework_demo.instances()
    args = framework_demo.parse_args([])
    cfg = framework_demo.run_config(row, specs[row], 0, args, 't.pth')
    demo = Config.fromfile(framework_demo.DEMO_CFG)
    norm = demo.model.data_preprocessor
    assert cfg.model.data_preprocessor.type == 'M3IDataPreprocessor'
    assert cfg.model.data_preprocessor.geometric_target_view is True
    assert cfg.model.data_preprocessor.mean == norm.mean
    views = [t for t in cfg.train_dataloader.dataset.pipeline
             if t.type == 'M3IViews']
    assert views[0].geometric_target_view is True
    if row in TEACHER_ROWS:
        target = cfg.model.image_target
        assert target.size == demo.model.backbone.img_size
        assert target.mean == target.source_mean == norm.mean
        assert target.std == target.source_std == norm.std
    # The demo's own config is left alone.
    assert 'geometric_target_view' not in [
        t for t in demo.train_dataloader.dataset.pipeline
        if t.type == 'M3IViews'][0]


def test_teacher_grid_must_match_the_students():
    """A teacher input size that changes the token grid is refused, not
    gathered at the wrong positions."""
    MessageHub.get_current_instance().update_info('max_iters', 100)
    model = tiny_row_model('dense-distillation_frozen-teacher',
                           teacher_size=SIZE + 2 * TINY_PATCH)
    data = model.data_preprocessor(raw_batch(), training=True)
    with pytest.raises(ValueError, match='36 dense targets .* 16 positions'):
        model(**data, mode='loss')
