"""The batched (device) and per-image (worker) view paths of M3I agree."""
import os
import os.path as osp
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.registry import DefaultScope
from scipy.stats import ks_2samp

from conftest import REPO
from m3i_mm.datasets.transforms import M3IViews
from m3i_mm.datasets.transforms.m3i_views import decode_reduction
from m3i_mm.models.utils import M3IDataPreprocessor, build_batch_augment

PHOTO = str(resources.files('sklearn.datasets') / 'images' / 'china.jpg')
DATA_CFG = Config.fromfile(
    osp.join(REPO, 'configs', '_base_', 'datasets', 'imagenet_m3i.py'))
SIZE = 64


def test_decode_reduction_keeps_both_crops_at_least_the_view_size():
    assert decode_reduction([(0, 0, 480, 640), (0, 0, 300, 500)],
                            (64, 64)) == 4
    assert decode_reduction([(0, 0, 480, 640), (0, 0, 100, 500)],
                            (64, 64)) == 1
    assert decode_reduction([(0, 0, 2000, 2000)] * 2, (224, 224)) == 8


def test_decoding_in_m3iviews_matches_the_decoded_array_path():
    """Same seed, same crops and flips: decoding here at reduced JPEG scale
    and cropping with Pillow gives the views of LoadImageFromFile + crop."""
    import mmcv
    img = mmcv.imread(PHOTO)
    views = M3IViews(size=SIZE, crop_scale=(0.5, 1.0))
    reduced = 0
    for seed in range(6):
        np.random.seed(seed)
        ref = views(dict(img=img.copy()))
        np.random.seed(seed)
        out = views(dict(img_path=PHOTO))
        np.testing.assert_array_equal(out['view_boxes'], ref['view_boxes'])
        np.testing.assert_array_equal(out['view_flips'], ref['view_flips'])
        assert out['ori_shape'] == img.shape[:2]
        crops = [(0, 0, b[3] - b[1], b[2] - b[0]) for b in ref['view_boxes']]
        reduced += decode_reduction(crops, (SIZE, SIZE)) > 1
        for a, b in zip(out['img'], ref['img']):
            assert a.shape == b.shape == (SIZE, SIZE, 3) and a.dtype == b.dtype
            # BGR like LoadImageFromFile; differences are resampling only.
            diff = np.abs(a.astype(float) - b.astype(float))
            assert diff.mean() < 3.0, diff.mean()
    assert reduced  # the reduced-scale decode was exercised


def test_m3iviews_decoding_names_a_broken_file(tmp_path):
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'not a jpeg')
    with pytest.raises(OSError, match='broken.jpg'):
        M3IViews(size=SIZE)(dict(img_path=str(bad)))
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    with pytest.raises(OSError, match=r'empty.jpg: the file is empty \(0 '):
        M3IViews(size=SIZE)(dict(img_path=str(empty)))


def view_statistics(views: np.ndarray) -> dict:
    """Per-sample statistics of (N, H, W, 3) RGB floats in 0-255."""
    gray = views.mean(-1)
    return dict(
        brightness=views.mean((1, 2, 3)),
        contrast=gray.std((1, 2)),
        saturation=views.std(-1).mean((1, 2)),
        sharpness=np.abs(np.diff(gray, axis=2)).mean((1, 2)),
        bright_pixels=(gray > 200).mean((1, 2)))


def per_image_views(n: int) -> list:
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose([
            dict(type='LoadImageFromFile'),
            dict(
                type='M3IViews',
                size=SIZE,
                target_view_transforms=DATA_CFG.target_view_aug,
                other_view_transforms=DATA_CFG.other_view_aug)
        ])
        outs = [pipeline(dict(img_path=PHOTO))['img'] for _ in range(n)]
    # BGR uint8 -> RGB float, per view.
    return [
        np.stack([o[k][..., ::-1] for o in outs]).astype(np.float64)
        for k in range(2)
    ]


def batched_views(n: int) -> list:
    views = M3IViews(size=SIZE)
    outs = [views(dict(img_path=PHOTO))['img'] for _ in range(n)]
    inputs = [
        torch.from_numpy(np.stack([o[k] for o in outs])).permute(0, 3, 1, 2)
        for k in range(2)
    ]
    preprocessor = M3IDataPreprocessor(
        to_rgb=True, view_transforms=DATA_CFG.view_transforms)
    out = preprocessor(dict(inputs=inputs, data_samples=None), training=True)
    return [v.permute(0, 2, 3, 1).double().numpy() for v in out['inputs']]


def test_batched_and_per_image_augmentation_draw_the_same_distributions():
    np.random.seed(0)
    torch.manual_seed(0)
    n = 300
    per_image, batched = per_image_views(n), batched_views(n)
    failures = []
    for k, name in enumerate(('target view', 'other view')):
        a, b = view_statistics(per_image[k]), view_statistics(batched[k])
        for stat in a:
            p = ks_2samp(a[stat], b[stat]).pvalue
            if p < 1e-3:
                failures.append(
                    f'{name} {stat}: per-image mean {a[stat].mean():.3f}, '
                    f'batched {b[stat].mean():.3f} (KS p={p:.2g})')
    assert not failures, failures
    # The two views are configured differently (blur p=1.0 vs 0.1): the
    # comparison can tell them apart.
    assert ks_2samp(
        view_statistics(batched[0])['sharpness'],
        view_statistics(batched[1])['sharpness']).pvalue < 1e-6


def test_batched_augmentation_per_sample_and_train_only():
    aug = M3IDataPreprocessor(
        to_rgb=True,
        view_transforms=[[dict(type='RandomGrayscale', prob=0.5,
                               keep_channels=True)], None])
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    data = dict(inputs=[x, x.clone()], data_samples=None)
    first, second = aug(data, training=True)['inputs']
    gray = (first.std(1) < 1e-4).flatten(1).all(1)
    assert 10 < int(gray.sum()) < 54  # its own draw per sample
    assert torch.equal(second, x[:, [2, 1, 0]].float())
    test_out = aug(data, training=False)['inputs'][0]
    assert torch.equal(test_out, x[:, [2, 1, 0]].float())
    with pytest.raises(ValueError, match='2 views but the batch has 1'):
        aug(dict(inputs=[x], data_samples=None), training=True)


def test_unsupported_transform_is_named():
    with pytest.raises(ValueError, match="'RandomErasing' has no batched"):
        build_batch_augment([dict(type='RandomErasing')])
    with pytest.raises(ValueError, match='magnitude_std'):
        build_batch_augment([dict(type='GaussianBlur',
                                  magnitude_range=(0.1, 2.0))])


def test_batched_augmentation_ignores_autocast():
    aug = M3IDataPreprocessor(
        to_rgb=True, view_transforms=DATA_CFG.view_transforms)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    data = dict(inputs=[x, x.clone()], data_samples=None)
    torch.manual_seed(1)
    ref = aug(data, training=True)['inputs']
    torch.manual_seed(1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = aug(data, training=True)['inputs']
    for a, b in zip(out, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def test_m3i_trains_with_batched_augmentation(demo_root, tmp_path):
    """tools/train.py: views decoded and cropped by M3IViews, colour
    augmented by M3IDataPreprocessor (the real launcher path)."""
    cfg = tmp_path / 'batched_demo.py'
    cfg.write_text(
        f"_base_ = ['{osp.join(REPO, 'configs', 'pretrain')}/"
        "m3i_vit-tiny_demo.py']\n"
        'model = dict(data_preprocessor=dict(type="M3IDataPreprocessor", '
        'view_transforms=[{{_base_.view_aug}}, {{_base_.view_aug}}]))\n'
        'train_dataloader = dict(dataset=dict(pipeline=[\n'
        '    dict(type="M3IViews", size=32, crop_scale=(0.4, 1.0), '
        'flip_prob=0.0),\n'
        '    dict(type="BlockwiseMaskGenerator", input_size=32, '
        'patch_size=4, mask_ratio=0.5, min_num_patches=4),\n'
        '    dict(type="PackInputs", '
        'algorithm_keys=["view_boxes", "view_flips"])]))\n')
    res = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'train.py'), str(cfg),
         '--work-dir', str(tmp_path / 'work'), '--cfg-options',
         f'train_dataloader.dataset.data_root={demo_root}',
         'train_dataloader.num_workers=0',
         'train_dataloader.persistent_workers=False',
         'train_dataloader.batch_size=8', 'train_cfg.max_iters=2',
         'default_hooks.checkpoint.interval=2',
         'default_hooks.logger.interval=1'],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert 'M3IDataPreprocessor' in out and 'loss_img_first' in out
    assert (tmp_path / 'work' / 'iter_2.pth').is_file()


def test_sample_fields_move_to_the_device_as_one_batch(demo_root):
    """The samples' shared tensor fields (mask, view boxes and flips) are
    rows of one tensor per field, moved by one copy, not one copy per sample
    (before: every sample's own tensors, 3 x N host-to-device copies a
    step on a GPU). The loss reads the same values."""
    from mmengine.config import Config
    from mmengine.dataset import default_collate
    from mmpretrain.registry import DATASETS, MODELS
    from conftest import config_path
    cfg = Config.fromfile(config_path('pretrain', 'm3i_vit-tiny_demo.py'))
    cfg.train_dataloader.dataset.data_root = demo_root
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    batch = default_collate([dataset[i] for i in range(4)])
    before = [s.mask.clone() for s in batch['data_samples']]
    samples = preprocessor(batch, training=True)['data_samples']
    for name in ('mask', 'view_boxes', 'view_flips'):
        storages = {s.get(name).untyped_storage().data_ptr()
                    for s in samples}
        assert len(storages) == 1, name
    for sample, mask in zip(samples, before):
        assert torch.equal(sample.mask, mask)


def test_fields_that_do_not_stack_stay_as_they_are():
    """A string array, arrays of different shapes, or a field some sample
    lacks is left per sample (``torch.from_numpy`` refuses strings)."""
    import numpy as np
    from mmpretrain.structures import DataSample
    from m3i_mm.models.utils import M3IDataPreprocessor
    samples = [DataSample() for _ in range(3)]
    for i, sample in enumerate(samples):
        sample.set_field(np.array(['a', 'b']), 'names')
        sample.set_field(np.zeros(i + 1), 'ragged')
        sample.set_field(np.zeros((2, 4)), 'view_boxes')
    samples[1].set_field(torch.ones(2), 'partial')
    M3IDataPreprocessor()._move_shared_fields(samples)
    assert all(isinstance(s.names, np.ndarray) for s in samples)
    assert all(isinstance(s.ragged, np.ndarray) for s in samples)
    assert isinstance(samples[1].partial, torch.Tensor)
    assert all(isinstance(s.view_boxes, torch.Tensor) for s in samples)
