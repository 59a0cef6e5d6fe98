import os
import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import m3i_mm  # noqa: E402,F401  (compat + registration, as configs do)


def _materialized(tmp_path_factory, name: str) -> str:
    from m3i_mm import datasets
    writer = getattr(datasets, f'materialize_{name}')
    return writer(str(tmp_path_factory.mktemp('data') / name))


# The embedded demo data sets, each materialised once per test session.
@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    return _materialized(tmp_path_factory, 'demo_digits')


@pytest.fixture(scope='session')
def coco_root(tmp_path_factory):
    return _materialized(tmp_path_factory, 'demo_digits_coco')


@pytest.fixture(scope='session')
def ade_root(tmp_path_factory):
    return _materialized(tmp_path_factory, 'demo_digits_ade')


@pytest.fixture(scope='session')
def lvis_root(tmp_path_factory):
    return _materialized(tmp_path_factory, 'demo_digits_lvis')


def demo_loader_options(demo_root: str,
                        loaders=('train_dataloader', 'val_dataloader')):
    """``--cfg-options`` that point ``loaders`` of a demo config at
    ``demo_root`` and load in the main process (no workers)."""
    return [
        f'{loader}.{option}' for loader in loaders
        for option in (f'dataset.data_root={demo_root}', 'num_workers=0',
                       'persistent_workers=False')
    ]


def config_path(*parts: str) -> str:
    return osp.join(REPO, 'configs', *parts)


# The tiny M3I of the unit tests: a 2-layer, 32-wide ViT on 16x16 inputs
# with 4-pixel patches (a 4x4 token grid).
TINY_PATCH, TINY_SIZE, TINY_DIMS, TINY_HEADS, TINY_LAYERS = 4, 16, 32, 4, 2
TINY_ARCH = dict(embed_dims=TINY_DIMS, num_layers=TINY_LAYERS,
                 num_heads=TINY_HEADS, feedforward_channels=64)


def tiny_m3i(init: bool = True, **overrides):
    """The tiny M3I model with all targets; ``overrides`` replace parts;
    ``init=False`` skips ``init_weights``."""
    from mmpretrain.registry import MODELS
    cfg = dict(
        type='M3I',
        backbone=dict(
            type='VisionTransformer', arch=TINY_ARCH, img_size=TINY_SIZE,
            patch_size=TINY_PATCH, out_type='featmap'),
        mixer=dict(type='MultiInputMixer', patch_size=TINY_PATCH),
        image_target=dict(type='MomentumImageTarget'),
        image_decoder=dict(
            type='ImageTargetDecoder', in_channels=TINY_DIMS,
            out_channels=TINY_DIMS, embed_dims=32, depth=1, num_heads=4),
        category_head=dict(
            type='AttentionPoolingHead', in_channels=TINY_DIMS,
            out_channels=TINY_DIMS, num_heads=4),
        category_embedding=dict(
            type='CategoryEmbedding', num_classes=5, embed_dims=TINY_DIMS))
    cfg.update(overrides)
    model = MODELS.build(cfg)
    if init:
        model.init_weights()
    return model


def load_script(*parts: str):
    """Import a script of the repository (tools/, benchmarks/) by path."""
    import importlib.util
    path = osp.join(REPO, *parts)
    name = osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def mmpretrain_default_scope():
    """Every test starts in mmpretrain's scope: a Runner of an mmdet/mmseg
    config leaves its own scope as the current one behind."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


@pytest.fixture(scope='session')
def zygote():
    """Starts tools/train.py runs as forks of one process (train_zygote.py)."""
    from train_zygote import Zygote
    client = Zygote()
    yield client
    client.close()
