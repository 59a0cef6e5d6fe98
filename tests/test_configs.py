"""Every config under configs/ loads and builds its model."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from conftest import REPO, config_path

CONFIGS = sorted(
    p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'),
                         recursive=True)
    if '_base_' not in p.split(osp.sep) and not osp.basename(p).endswith(
        '_model.py'))


def model_registry(scope: str):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def test_there_are_configs():
    assert any(p.endswith('vit-tiny_sup_demo.py') for p in CONFIGS)


@pytest.mark.parametrize(
    'path', CONFIGS, ids=[osp.relpath(p, REPO) for p in CONFIGS])
def test_config_loads_and_builds_model(path):
    cfg = Config.fromfile(path)
    assert 'm3i_mm' in cfg.custom_imports['imports']
    scope = cfg.get('default_scope', 'mmpretrain')
    with DefaultScope.overwrite_default_scope(scope):
        # Build on the meta device: shapes and wiring without allocating
        # (the real-scale configs hold up to a billion parameters).
        with torch.device('meta'):
            model = model_registry(scope).build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0


PIPELINE_CONFIGS = [p for p in CONFIGS if 'pretrain' in p.split(osp.sep)]


@pytest.mark.parametrize(
    'path', PIPELINE_CONFIGS,
    ids=[osp.relpath(p, REPO) for p in PIPELINE_CONFIGS])
def test_pretrain_pipeline_runs_on_a_real_image(path, demo_root):
    from mmcv.transforms import Compose
    cfg = Config.fromfile(path)
    dataset = cfg.train_dataloader.dataset
    # Multi-source configs: the sources with a file-loading pipeline.
    sources = dataset.get('sources') or dataset.get('datasets') or [dataset]
    steps = sources[0].pipeline
    path = osp.join(demo_root, 'train', 'zero', 'digit_00000.png')
    results = dict(img_path=path)
    # M3IViews decodes img_path itself (the batched-augmentation pipelines).
    loaders = ('NamedLoadImageFromFile', 'M3IViews')
    if steps[0]['type'] not in loaders:  # streamed
        import mmcv
        img = mmcv.imread(path)
        results = dict(img=img, img_shape=img.shape[:2], caption='a zero')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        out = Compose(steps)(results)
    views = out['inputs']
    size = next(t['size'] for t in steps if t['type'] == 'M3IViews')
    assert len(views) == 2 and views[0].shape == views[1].shape
    assert views[0].shape[-1] == size
    sample = out['data_samples']
    mask = sample.mask
    assert tuple(mask.shape) == (size // cfg.model.mixer.patch_size, ) * 2
    assert sample.view_boxes.shape == (2, 4)
    if steps[0]['type'] in loaders:
        # Errors about a sample (mask counts, labels) name its file.
        assert sample.get('img_path') == path


@pytest.mark.parametrize(
    'path', PIPELINE_CONFIGS,
    ids=[osp.relpath(p, REPO) for p in PIPELINE_CONFIGS])
def test_views_are_colour_augmented_once(path):
    """Per image in the workers or batched on the device, never both."""
    cfg = Config.fromfile(path)
    batched = (cfg.model.get('data_preprocessor') or {}).get(
        'view_transforms') is not None
    dataset = cfg.train_dataloader.dataset
    sources = dataset.get('sources') or dataset.get('datasets') or [dataset]
    for source in sources:
        for step in source.pipeline:
            if step['type'] == 'M3IViews':
                per_image = step.get('target_view_transforms') or step.get(
                    'other_view_transforms')
                assert not (batched and per_image), (
                    f'{osp.basename(path)}: M3IViews has per-image '
                    'photometric transforms and the data preprocessor '
                    'view_transforms')


def _blur_and_solarize(transforms):
    """(blur probability, solarize probability) of one view's list."""
    probs = {t['type']: t.get('prob', 1.0) for t in transforms}
    return probs.get('GaussianBlur', 0.0), probs.get('Solarize', 0.0)


def test_view_augmentation_follows_siameseim():
    """SiameseIM [67]: online view blur p=1.0; target view blur p=0.1 and
    solarize p=0.2. View 0 is M3I's target view, view 1 only an input."""
    cfg = Config.fromfile(config_path('pretrain', 'm3i_vitb.py'))
    target, other = cfg.model.data_preprocessor.view_transforms
    assert _blur_and_solarize(target) == (0.1, 0.2)
    assert _blur_and_solarize(other) == (1.0, 0.0)
    per_image = Config.fromfile(
        config_path('pretrain', 'm3i_vitb_per-image-aug.py'))
    views = next(step for step in per_image.train_dataloader.dataset.pipeline
                 if step['type'] == 'M3IViews')
    assert _blur_and_solarize(views['target_view_transforms']) == (0.1, 0.2)
    assert _blur_and_solarize(views['other_view_transforms']) == (1.0, 0.0)
