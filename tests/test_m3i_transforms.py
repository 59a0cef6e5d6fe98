"""Tests of the M3I data transforms and tools/visualize_views.py."""
import os.path as osp

import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmengine.dataset import default_collate
from PIL import Image

import m3i_mm  # noqa: F401
from m3i_mm.datasets.transforms import BlockwiseMaskGenerator, M3IViews
from m3i_mm.models.utils.mixing import mix_images
from m3i_mm.registry import TRANSFORMS

from conftest import load_script  # noqa: E402


def ramp_image(h: int = 60, w: int = 80) -> np.ndarray:
    """uint8 (h, w, 3) image: channel 0 = 3 * x, channel 1 = 3 * y."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([3 * xs, 3 * ys, np.full_like(xs, 128)],
                    axis=-1).astype(np.uint8)


def view_coord(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Original pixel-centre coordinate at view fraction ``u`` of a box."""
    return lo + u * (hi - lo) - 0.5  # pixel i is centred at i + 0.5


# --------------------------------------------------------------------------
# BlockwiseMaskGenerator
# --------------------------------------------------------------------------
@pytest.mark.parametrize('input_size,patch,ratio,grid,count', [
    (32, 4, 0.5, (8, 8), 32),
    (224, 16, 0.4, (14, 14), 78),  # round(78.4)
    ((32, 64), 16, 0.5, (2, 4), 4),
    (32, 4, 0.9, (8, 8), 58),  # beyond what blocks alone reach quickly
    (32, 4, 0.0, (8, 8), 0),
    (32, 4, 1.0, (8, 8), 64),
])
def test_mask_exact_count(input_size, patch, ratio, grid, count):
    gen = BlockwiseMaskGenerator(
        input_size, patch_size=patch, mask_ratio=ratio)
    np.random.seed(0)
    for _ in range(30):
        mask = gen({})['mask']
        assert mask.shape == grid and mask.dtype == np.bool_
        assert int(mask.sum()) == count


def test_mask_is_blockwise():
    gen = BlockwiseMaskGenerator(32, patch_size=4, mask_ratio=0.5)
    np.random.seed(1)
    masks = np.stack([gen({})['mask'] for _ in range(100)])
    # 32 of 64 patches scattered at random have 56 * 32/64 * 31/63 = 13.8
    # horizontally adjacent masked pairs on average; blocks have many more.
    pairs = (masks[:, :, 1:] & masks[:, :, :-1]).sum(axis=(1, 2))
    assert pairs.mean() > 20


def test_mask_blocks_reach_every_position():
    # 4 patches with aspect 1: every block is 2x2. All 7x7 offsets must occur
    # (mmpretrain's exclusive randint never reaches the last row/column).
    gen = BlockwiseMaskGenerator(
        32, patch_size=4, mask_ratio=4 / 64, min_aspect=1., max_aspect=1.)
    np.random.seed(2)
    corners = set()
    for _ in range(400):
        block = np.zeros((8, 8), dtype=bool)
        assert gen._mask(block, 4) == 4
        rows, cols = np.nonzero(block)
        assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1
        corners.add((rows.min(), cols.min()))
    assert corners == {(r, c) for r in range(7) for c in range(7)}


def test_mask_top_up_when_blocks_fail(monkeypatch):
    gen = BlockwiseMaskGenerator(32, patch_size=4, mask_ratio=0.25)
    monkeypatch.setattr(gen, '_mask', lambda mask, max_patches: 0)
    mask = gen({})['mask']
    assert mask.sum() == 16 and mask.shape == (8, 8)


def test_mask_min_num_patches_clipped_for_small_grids():
    # 8x8 grid, 10% -> 6 masked patches: blocks of >= 16 patches are
    # impossible, so the minimum block area is clipped to 6.
    gen = BlockwiseMaskGenerator(32, patch_size=4, mask_ratio=0.1)
    assert gen.num_masking_patches == 6 and gen.min_num_patches == 6
    assert BlockwiseMaskGenerator(224).min_num_patches == 16
    assert TRANSFORMS.build(
        dict(type='BlockwiseMaskGenerator', input_size=32,
             patch_size=4)).num_masking_patches == 32


@pytest.mark.parametrize('kwargs,match', [
    (dict(input_size=30, patch_size=4), 'not divisible'),
    (dict(input_size=(32, 30), patch_size=16), 'not divisible'),
    (dict(input_size=32, patch_size=0), 'patch_size'),
    (dict(input_size=32, patch_size=4, mask_ratio=1.5), 'mask_ratio'),
    (dict(input_size=-32, patch_size=4), 'input_size'),
    (dict(input_size=(32, 32, 3), patch_size=4), 'input_size'),
])
def test_mask_bad_args(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        BlockwiseMaskGenerator(**kwargs)


# --------------------------------------------------------------------------
# M3IViews
# --------------------------------------------------------------------------
def test_views_keys_and_dtypes():
    np.random.seed(0)
    out = M3IViews(size=32)(dict(img=ramp_image(), ori_shape=(60, 80)))
    target, other = out['img']
    assert target.shape == other.shape == (32, 32, 3)
    assert target.dtype == other.dtype == np.uint8
    assert out['img_shape'] == (32, 32)
    assert out['view_boxes'].shape == (2, 4)
    assert out['view_boxes'].dtype == np.float32
    assert out['view_flips'].shape == (2, )
    assert out['view_flips'].dtype == np.bool_


@pytest.mark.parametrize('backend,interpolation', [('pillow', 'bicubic'),
                                                   ('cv2', 'bilinear')])
@pytest.mark.parametrize('flip', [False, True])
def test_views_box_semantics(backend, interpolation, flip):
    """View pixels hold the original content predicted by the box mapping."""
    img = ramp_image()
    views = M3IViews(
        size=32,
        flip_prob=float(flip),
        interpolation=interpolation,
        backend=backend)
    np.random.seed(3)
    j = np.arange(4, 28)  # interior pixels: no border effects of the kernel
    for _ in range(5):
        out = views(dict(img=img))
        assert out['view_flips'].tolist() == [flip, flip]
        for view, (x0, y0, x1, y1) in zip(out['img'], out['view_boxes']):
            assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 60
            u = (j + 0.5) / 32
            u_src = 1 - u if flip else u  # flipping after the resize
            xs = view_coord(u_src, x0, x1)
            ys = view_coord(u, y0, y1)
            np.testing.assert_allclose(
                view[16, j, 0].astype(float), 3 * xs, atol=1.01)
            np.testing.assert_allclose(
                view[j, 16, 1].astype(float), 3 * ys, atol=1.01)


def test_views_box_semantics_nearest_exact():
    img = ramp_image()
    np.random.seed(5)
    out = M3IViews(
        size=32, flip_prob=0., interpolation='nearest',
        backend='pillow')(dict(img=img))
    for view, (x0, y0, x1, y1) in zip(out['img'], out['view_boxes']):
        j = np.arange(32)
        src_x = x0 + np.floor((j + 0.5) * (x1 - x0) / 32)
        src_y = y0 + np.floor((j + 0.5) * (y1 - y0) / 32)
        assert (view[0, :, 0] == 3 * src_x).all()
        assert (view[:, 0, 1] == 3 * src_y).all()


def test_views_crop_sampling_ranges():
    img = np.zeros((60, 80, 3), dtype=np.uint8)
    views = M3IViews(size=16, crop_scale=(0.3, 0.6), crop_ratio=(0.5, 2.0))
    np.random.seed(0)
    boxes = np.concatenate(
        [views(dict(img=img))['view_boxes'] for _ in range(100)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # int rounding of the sides moves area and ratio slightly.
    assert (w * h / 4800 > 0.27).all() and (w * h / 4800 < 0.65).all()
    assert ((w / h) > 0.45).all() and ((w / h) < 2.2).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 80).all()
    assert (boxes[:, 3] <= 60).all()
    # Two views of one image are sampled independently.
    assert not np.array_equal(boxes[0::2], boxes[1::2])


def test_views_center_crop_fallback():
    # A square crop of the whole area cannot fit 60x80: centre crop 60x60.
    out = M3IViews(size=20, crop_scale=(1., 1.), crop_ratio=(1., 1.))(
        dict(img=ramp_image()))
    np.testing.assert_array_equal(out['view_boxes'],
                                  [[10, 0, 70, 60], [10, 0, 70, 60]])


def test_views_photometric_pipelines_per_view():
    img = np.random.RandomState(0).randint(0, 256, (32, 32, 3), np.uint8)
    views = TRANSFORMS.build(
        dict(
            type='M3IViews',
            size=32,
            crop_scale=(1., 1.),
            crop_ratio=(1., 1.),
            flip_prob=0.,
            # RandomApply (mmcv) around an mmpretrain transform: built
            # without a default scope.
            other_view_transforms=[
                dict(
                    type='RandomApply',
                    transforms=[dict(type='Solarize', thr=0, prob=1.)],
                    prob=1.)
            ]))
    target, other = views(dict(img=img))['img']
    np.testing.assert_array_equal(target, img)  # full crop, same size
    np.testing.assert_array_equal(other, 255 - img)  # inverted: other only


def test_views_errors():
    with pytest.raises(ValueError, match='changed the view shape'):
        M3IViews(
            size=32, target_view_transforms=[dict(type='Resize',
                                                  scale=(8, 8))])(
                                                      dict(img=ramp_image()))
    with pytest.raises(TypeError, match="results\\['img'\\]"):
        M3IViews(size=32)(dict(img=[ramp_image()]))
    with pytest.raises(ValueError, match="results\\['img'\\]"):
        M3IViews(size=32)(dict(img=np.zeros((4, 4, 3, 1), np.uint8)))
    with pytest.raises(ValueError, match='crop_scale'):
        M3IViews(size=32, crop_scale=(0.5, 0.2))
    with pytest.raises(TypeError, match='other_view_transforms'):
        M3IViews(size=32, other_view_transforms=dict(type='ColorJitter'))


# --------------------------------------------------------------------------
# Packing, collate and the data preprocessor
# --------------------------------------------------------------------------
def test_pack_collate_preprocess_end_to_end():
    from mmpretrain.models import SelfSupDataPreprocessor
    from mmpretrain.structures import DataSample

    # Built with mmpretrain's registry, as a dataset does under the
    # 'mmpretrain' default scope.
    pipeline = Compose([
        TRANSFORMS.build(t) for t in [
            dict(type='M3IViews', size=32),
            dict(type='BlockwiseMaskGenerator', input_size=32, patch_size=4),
            dict(
                type='PackInputs',
                algorithm_keys=['mask', 'view_boxes', 'view_flips']),
        ]
    ])
    np.random.seed(0)
    packed = [pipeline(dict(img=ramp_image(), ori_shape=(60, 80)))
              for _ in range(2)]
    first = packed[0]
    assert isinstance(first['inputs'], list) and len(first['inputs']) == 2
    assert first['inputs'][0].shape == (3, 32, 32)
    assert first['inputs'][0].dtype == torch.uint8
    sample = first['data_samples']
    assert isinstance(sample, DataSample)
    assert sample.img_shape == (32, 32)
    # algorithm_keys keep numpy arrays; listing 'mask' there overrides the
    # tensor PackInputs makes from 'mask' by default.
    assert isinstance(sample.view_boxes, np.ndarray)
    assert sample.view_boxes.dtype == np.float32
    assert sample.view_flips.dtype == np.bool_
    assert isinstance(sample.mask, np.ndarray) and sample.mask.sum() == 32
    # Without 'mask' in algorithm_keys, PackInputs stores a bool tensor.
    repacked = TRANSFORMS.build(
        dict(type='PackInputs', algorithm_keys=['view_boxes']))(
            dict(img=[ramp_image()] * 2, mask=sample.mask))
    assert repacked['data_samples'].mask.dtype == torch.bool

    batch = default_collate(packed)
    assert len(batch['inputs']) == 2
    assert batch['inputs'][0].shape == (2, 3, 32, 32)
    assert len(batch['data_samples']) == 2

    preprocessor = SelfSupDataPreprocessor(
        mean=[127.5] * 3, std=[127.5] * 3, to_rgb=True)
    data = preprocessor(batch)
    target, other = data['inputs']
    assert target.shape == other.shape == (2, 3, 32, 32)
    assert target.dtype == torch.float32
    # Normalised and BGR -> RGB: channel 2 of the output is input channel 0.
    expected = (batch['inputs'][0][1, 0].float() - 127.5) / 127.5
    torch.testing.assert_close(target[1, 2], expected)
    samples = data['data_samples']
    np.testing.assert_array_equal(samples[1].view_boxes,
                                  packed[1]['data_samples'].view_boxes)

    # The model-side use: stack the fields and mix the two inputs.
    mask = torch.stack([torch.as_tensor(s.mask) for s in samples])
    boxes = torch.stack([torch.as_tensor(s.view_boxes) for s in samples])
    assert mask.shape == (2, 8, 8) and boxes.shape == (2, 2, 4)
    sigma = torch.tensor([1, 0])
    mixed = mix_images(target, other, mask, sigma, 4)
    r, c = map(int, torch.nonzero(mask[0])[0])
    torch.testing.assert_close(mixed[0, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4],
                               other[1, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4])
    r, c = map(int, torch.nonzero(~mask[0])[0])
    torch.testing.assert_close(mixed[0, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4],
                               target[0, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4])


# --------------------------------------------------------------------------
# tools/visualize_views.py
# --------------------------------------------------------------------------
def load_tool():
    return load_script('tools', 'visualize_views.py')


def write_config(tmp_path, pipeline: str) -> str:
    rng = np.random.RandomState(0)
    for k in range(3):
        Image.fromarray(rng.randint(0, 256, (40, 48, 3), np.uint8)).save(
            tmp_path / f'img{k}.png')
    cfg = tmp_path / 'vis_cfg.py'
    cfg.write_text(
        'default_scope = "mmpretrain"\n'
        f'train_dataloader = dict(dataset=dict(type="CustomDataset", '
        f'data_root={str(tmp_path)!r}, with_label=False, '
        f'pipeline={pipeline}))\n')
    return str(cfg)


# M3IViews after LoadImageFromFile, or decoding the file itself.
@pytest.mark.parametrize('load', ['dict(type="LoadImageFromFile"), ', ''])
def test_visualize_views_main_writes_pngs(tmp_path, load):
    tool = load_tool()
    cfg = write_config(
        tmp_path, f'[{load}'
        'dict(type="M3IViews", size=32), '
        'dict(type="BlockwiseMaskGenerator", input_size=32, patch_size=4), '
        'dict(type="PackInputs", algorithm_keys=["view_boxes"])]')
    out_dir = tmp_path / 'vis'
    paths = tool.main([cfg, '--num-samples', '2', '--out-dir', str(out_dir)])
    assert len(paths) == 2
    for path in paths:
        assert osp.dirname(path) == str(out_dir)
        with Image.open(path) as png:
            assert png.size == tool.PNG_SIZE == (1500, 340)


def test_visualize_views_needs_m3i_views(tmp_path):
    tool = load_tool()
    cfg = write_config(
        tmp_path, '[dict(type="LoadImageFromFile"), dict(type="PackInputs")]')
    with pytest.raises(KeyError, match='M3IViews'):
        tool.main([cfg, '--out-dir', str(tmp_path / 'vis')])


def test_visualize_views_mixing():
    tool = load_tool()
    size, p = 8, 4
    samples = []
    for k in range(2):
        mask = np.zeros((2, 2), dtype=bool)
        mask[k, :] = True  # sample k takes row k from its partner
        samples.append(
            dict(
                views=[
                    np.full((size, size, 3), 10 + k, np.uint8),
                    np.full((size, size, 3), 100 + k, np.uint8)
                ],
                mask=mask))
    mixed, sigma = tool.mix_samples(samples)
    assert sigma.tolist() == [1, 0]
    # Sample 0: top row of patches from sample 1's other view (101).
    assert (mixed[0, :, :p] == 101).all() and (mixed[0, :, p:] == 10).all()
    assert (mixed[1, :, p:] == 100).all() and (mixed[1, :, :p] == 11).all()
    for sample in samples:
        sample['mask'] = np.zeros((3, 3), dtype=bool)  # 8 px not 3 patches
    with pytest.raises(ValueError, match='mask'):
        tool.mix_samples(samples)
