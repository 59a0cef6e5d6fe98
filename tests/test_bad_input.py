"""Bad input fails with an error (or warning) naming the file, key or value.

Zero-byte images and maps, empty datasets, unknown optimizer types,
misspelt top-level config keys, and ``load_from`` checkpoints of another
architecture, through the transforms, datasets, Runner and tools/train.py.
"""
import inspect
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import RUNNERS

from conftest import REPO, config_path, demo_loader_options, load_script
from m3i_mm.engine import CheckpointMismatchError
from m3i_mm.utils import misspelt_top_level_keys

DEMO_CFG = config_path('demo', 'vit-tiny_sup_demo.py')


@pytest.fixture(scope='module')
def bad_root(demo_root, tmp_path_factory):
    """A copy of the demo digits whose first train image has zero bytes."""
    root = str(tmp_path_factory.mktemp('bad') / 'digits')
    shutil.copytree(demo_root, root)
    first = open(osp.join(root, 'meta', 'train.txt')).readline().split()[0]
    open(osp.join(root, first), 'wb').close()
    return root, osp.join(root, first)


def test_zero_byte_image_names_the_file(bad_root):
    """It raised cv2's ``(-215:Assertion failed) !buf.empty()``; the demo
    config's train pipeline (``NamedLoadImageFromFile``) names the file,
    mmcv's own ``LoadImageFromFile`` is left as upstream wrote it."""
    from mmcv.transforms import LoadImageFromFile
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import DATASETS
    root, image = bad_root
    cfg = Config.fromfile(DEMO_CFG).train_dataloader.dataset
    cfg.data_root = root
    assert cfg.pipeline[0].type == 'NamedLoadImageFromFile'
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(cfg)
    with pytest.raises(ValueError, match=rf'{image}.*empty \(0 bytes\)'):
        dataset[0]
    assert dataset[1]['inputs'].shape == (3, 32, 32)
    with pytest.raises(Exception) as upstream:
        LoadImageFromFile()(dict(img_path=image))
    assert image not in str(upstream.value)


@pytest.mark.parametrize('path,scope,extra', [
    ('ade20k/upernet_vit-tiny_m3i_demo.py', 'mmseg',
     dict(seg_fields=[], reduce_zero_label=False)),
    ('coco/mask-rcnn_vitdet-tiny_m3i_demo.py', 'mmdet', {}),
])
def test_zero_byte_segmentation_map_names_the_file(tmp_path, path, scope,
                                                   extra):
    """The downstream configs' ``NamedLoadAnnotations`` (mmseg's and
    mmdet's, the latter loading maps with ``with_seg``)."""
    from mmengine.registry import TRANSFORMS, DefaultScope
    step = Config.fromfile(
        config_path('downstream', path)).train_pipeline[1]
    assert step.type == 'NamedLoadAnnotations'
    if scope == 'mmdet':
        step.update(with_bbox=False, with_label=False, with_mask=False,
                    with_seg=True)
    seg_map = tmp_path / 'map.png'
    seg_map.write_bytes(b'')
    with DefaultScope.overwrite_default_scope(scope):
        load = TRANSFORMS.build(step)
    with pytest.raises(ValueError, match=rf'{seg_map}.*empty'):
        load(dict(seg_map_path=str(seg_map), **extra))


def test_missing_image_error_unchanged(tmp_path):
    from m3i_mm.datasets import NamedLoadImageFromFile
    with pytest.raises(FileNotFoundError, match='nothing.png'):
        NamedLoadImageFromFile()(dict(img_path=str(tmp_path / 'nothing.png')))


@pytest.mark.parametrize('serialize', [True, False])
@pytest.mark.parametrize('dataset', ['ImageTextDataset', 'DemoDigits',
                                     'CustomDataset'])
def test_empty_dataset_names_its_annotation_file(demo_root, tmp_path,
                                                 dataset, serialize):
    """It raised numpy's ``need at least one array to concatenate`` (or,
    unserialised, failed later in the sampler). Our datasets name their
    files; an upstream one does inside ``NonEmptyDataset``."""
    from mmpretrain.registry import DATASETS
    ann = tmp_path / ('train.jsonl'
                      if dataset == 'ImageTextDataset' else 'train.txt')
    ann.write_text('')
    cfg = dict(type=dataset, data_root=str(tmp_path), ann_file=ann.name,
               serialize_data=serialize)
    if dataset == 'DemoDigits':
        cfg.update(data_root=demo_root, ann_file=str(ann))
    if dataset == 'CustomDataset':
        cfg = dict(type='NonEmptyDataset', dataset=cfg)
    with pytest.raises(ValueError, match=rf'{dataset} has no samples: '
                       rf"ann_file='{ann}'"):
        DATASETS.build(cfg)


@pytest.mark.parametrize('loader', ['train_dataloader', 'val_dataloader'])
def test_m3i_runner_names_an_empty_upstream_dataset(tmp_path, loader):
    """Any config run by ``M3IRunner`` (ours: ImageNet, COCO, ADE20k with
    upstream datasets) names an empty dataset without a wrapper; it raised
    numpy's ``need at least one array to concatenate``."""
    from m3i_mm.engine import M3IRunner, SeededDataset
    ann = tmp_path / 'train.txt'
    ann.write_text('')
    cfg = dict(batch_size=2, num_workers=0,
               sampler=dict(type='DefaultSampler', shuffle=False),
               dataset=dict(type='CustomDataset', data_root=str(tmp_path),
                            ann_file=ann.name, pipeline=[]))
    if loader == 'train_dataloader':  # as M3IRunner.build_train_loop does
        cfg['dataset'] = dict(type=SeededDataset, dataset=cfg['dataset'])
    with pytest.raises(ValueError, match=rf"CustomDataset has no samples: "
                       rf"ann_file='{ann}'"):
        M3IRunner.build_dataloader(cfg)


def test_empty_dataset_wrapper_is_transparent(demo_root, tmp_path):
    """``NonEmptyDataset`` of a loadable dataset is that dataset; a loading
    error of the wrapped dataset passes unchanged."""
    from mmpretrain.registry import DATASETS
    inner = dict(type='CustomDataset', data_root=demo_root,
                 ann_file='meta/val.txt', indices=5,
                 pipeline=[dict(type='NamedLoadImageFromFile'),
                           dict(type='PackInputs')])
    wrapped = DATASETS.build(dict(type='NonEmptyDataset', dataset=inner))
    plain = DATASETS.build(inner)
    assert len(wrapped) == 5
    assert wrapped.metainfo == plain.metainfo
    assert wrapped.get_data_info(4) == plain.get_data_info(4)
    assert torch.equal(wrapped[4]['inputs'], plain[4]['inputs'])
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('not json\n')
    with pytest.raises(ValueError, match='bad.jsonl, line 1: not JSON'):
        DATASETS.build(dict(type='NonEmptyDataset', dataset=dict(
            type='ImageTextDataset', ann_file=str(bad))))


def test_upstream_loaders_and_datasets_are_untouched():
    """``import m3i_mm`` replaces none of the methods its named errors
    extend."""
    from mmcv.transforms import LoadAnnotations, LoadImageFromFile
    from mmdet.datasets.transforms import LoadAnnotations as DetAnnotations
    from mmengine.dataset import BaseDataset
    from mmseg.datasets.transforms import LoadAnnotations as SegAnnotations
    for cls, name in [(LoadImageFromFile, 'transform'),
                      (LoadAnnotations, '_load_seg_map'),
                      (DetAnnotations, '_load_seg_map'),
                      (SegAnnotations, '_load_seg_map'),
                      (BaseDataset, 'full_init'),
                      (BaseDataset, '_serialize_data')]:
        assert getattr(cls, name).__code__.co_filename == \
            inspect.getfile(cls), (cls, name)


def test_unknown_optimizer_type_is_named(demo_root, tmp_path):
    """It raised ``None is not a callable object`` (M3IRunner names it)."""
    runner = RUNNERS.build(small_cfg(demo_root, tmp_path))
    with pytest.raises(KeyError, match=r"AdamWW.*did you mean 'AdamW'"):
        runner.build_optim_wrapper(
            dict(optimizer=dict(type='AdamWW', lr=1e-3)))
    wrapper = runner.build_optim_wrapper(
        dict(optimizer=dict(type='AdamW', lr=1e-3)))
    assert type(wrapper.optimizer).__name__ == 'AdamW'


def test_misspelt_top_level_keys_are_named():
    cfg = Config(dict(train_dataloaders=dict(batch_size=4), optim_wraper={},
                      load_form='x.pth', train_dataloader={}, data_root='d',
                      norm_cfg={}, val_pipeline=[]))
    assert misspelt_top_level_keys(cfg) == {
        'train_dataloaders': " (did you mean 'train_dataloader'?)",
        'optim_wraper': " (did you mean 'optim_wrapper'?)",
        'load_form': " (did you mean 'load_from'?)",
    }


def test_shipped_configs_have_no_misspelt_keys():
    import glob
    found = {}
    for path in sorted(glob.glob(config_path('**', '*.py'), recursive=True)):
        if '_base_' not in path:
            found.update(misspelt_top_level_keys(Config.fromfile(path)))
    assert found == {}


def small_cfg(demo_root, work_dir, **overrides):
    cfg = Config.fromfile(DEMO_CFG)
    cfg.work_dir = str(work_dir)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = demo_root
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.log_level = 'WARNING'
    cfg.merge_from_dict(overrides)
    return cfg


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """State dicts for the demo ViT: its own (``same``), its backbone only,
    one whose head is for 5 classes (shape mismatch) and one of another
    architecture (a ResNet-like set of keys)."""
    root = tmp_path_factory.mktemp('ckpts')
    runner_cfg = Config.fromfile(DEMO_CFG)
    from mmpretrain.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(runner_cfg.model)
    own = model.state_dict()
    paths = {}
    variants = {
        'same': own,
        'backbone': {k: v for k, v in own.items()
                     if k.startswith('backbone.')},
        'mismatch': {k: (v[:5] if k.startswith('head.') else v)
                     for k, v in own.items()},
        # a converted backbone with a final norm the model does not use
        'extra': dict(own, **{'backbone.ln_final.weight': torch.ones(4),
                              'backbone.ln_final.bias': torch.zeros(4)}),
        # keys without 'backbone.': only the head would load
        'unprefixed': {k.replace('backbone.', '', 1): v
                       for k, v in own.items() if k.startswith((
                           'head.', 'backbone.cls_token',
                           'backbone.pos_embed'))},
        'empty': {},
        'other': {'backbone.conv1.weight': torch.zeros(8, 3, 7, 7),
                  'backbone.layer1.0.bn1.weight': torch.ones(8),
                  'head.fc.weight': torch.zeros(10, 8)},
    }
    for name, state in variants.items():
        paths[name] = str(root / f'{name}.pth')
        torch.save(dict(state_dict=state, meta={}), paths[name])
    return paths, own


@pytest.mark.parametrize('name,strict,refused', [
    ('same', None, None),
    ('backbone', None, None),
    ('backbone', True, r'\d+ missing key\(s\): head\.'),
    ('extra', None, None),
    ('extra', True, r'2 unexpected key\(s\): backbone\.ln_final\.weight'),
    ('mismatch', None, r'2 mismatched key\(s\): head\.fc\.weight, '
     r'head\.fc\.bias'),
    ('other', None, r'2 unexpected key\(s\): backbone\.conv1\.weight, '
     r'backbone\.layer1\.0\.bn1\.weight; \d+ missing key\(s\): '
     r'backbone\.cls_token.*1 mismatched key\(s\): head\.fc\.weight'),
    ('other', False, None),
    ('unprefixed', None, r'loads no backbone tensor into the model '
     r'ImageClassifier: all \d+ backbone\.\* keys are missing'),
    ('empty', None, r'loads no tensor into the model ImageClassifier: its '
     r'state_dict is empty'),
])
def test_load_from_of_another_architecture_is_refused(
        demo_root, tmp_path, checkpoints, name, strict, refused):
    """``load_from`` a checkpoint of another architecture trained on with
    random weights after a warning. Now refused, naming the file and the
    keys, unless ``load_strict=False``; a backbone for a model with a new
    head (missing keys) or with a few extra keys still loads by default."""
    paths, own = checkpoints
    overrides = dict(load_from=paths[name])
    if strict is not None:
        overrides['load_strict'] = strict
    runner = RUNNERS.build(small_cfg(demo_root, tmp_path, **overrides))
    if refused:
        with pytest.raises(CheckpointMismatchError,
                           match=rf'{paths[name]}.*{refused}.*load_strict'):
            runner.load_or_resume()
        return
    runner.load_or_resume()
    loaded = runner.model.state_dict()
    key = 'backbone.patch_embed.projection.weight'
    assert torch.equal(loaded[key], own[key]) == (name != 'other')


def test_test_cli_refuses_a_checkpoint_without_weights(
        demo_root, tmp_path, checkpoints, monkeypatch):
    """tools/test.py on a checkpoint with an empty state_dict exited 0 with
    the random-init model's metrics."""
    paths, _ = checkpoints
    test = load_script('tools', 'test.py')
    monkeypatch.setattr('sys.argv', [
        'test.py', DEMO_CFG, paths['empty'], '--work-dir', str(tmp_path),
        '--cfg-options',
        *demo_loader_options(demo_root, ('test_dataloader', )),
        'model.backbone.arch.num_layers=1'
    ])
    with pytest.raises(CheckpointMismatchError,
                       match=f'Checkpoint {paths["empty"]} loads no tensor'):
        test.main()


def test_train_cli_names_bad_keys_and_checkpoint(demo_root, tmp_path,
                                                 checkpoints):
    """The user's command: a misspelt key warns, a checkpoint of another
    architecture stops the run with exit code 1 before any iteration."""
    paths, _ = checkpoints
    args = [
        sys.executable, osp.join(REPO, 'tools', 'train.py'), DEMO_CFG,
        '--work-dir', str(tmp_path), '--cfg-options',
        *demo_loader_options(demo_root),
        'train_dataloaders.batch_size=8', f'load_from={paths["other"]}',
        'train_cfg.max_iters=1'
    ]
    res = subprocess.run(args, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert res.returncode == 1
    assert ("config key 'train_dataloaders' is not read by anything and is "
            "ignored (did you mean 'train_dataloader'?)") in res.stderr
    assert (f'CheckpointMismatchError: Checkpoint {paths["other"]} does not '
            'fit the model') in res.stderr
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.pth')]
