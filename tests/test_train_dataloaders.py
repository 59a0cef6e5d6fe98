"""Every pre-training config builds its train dataloader, which has a len().

mmengine's Runner takes ``len(train_dataloader)`` before the first iteration
(param schedulers' ``epoch_length``, LoggerHook, LogProcessor). The data
roots are redirected to tiny stand-ins written here: an ImageNet-style
``meta/train.txt``, two tar shards, the demo digits.
"""
import math
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from conftest import REPO
from test_configs import PIPELINE_CONFIGS
from test_image_text_data import one_caption_shards


def redirect(node, fake_root: str, demo_root: str, shards: str) -> None:
    """Point every dataset config under ``node`` at the stand-in data."""
    if isinstance(node, list):
        for item in node:
            redirect(item, fake_root, demo_root, shards)
        return
    if not isinstance(node, dict):
        return
    kind = str(node.get('type', ''))
    if kind == 'ImageTextShards':
        node.update(data_root='', shards=shards)
    elif kind.startswith('DemoDigits'):
        node['data_root'] = demo_root
    elif 'data_root' in node:
        node['data_root'] = fake_root
    for value in node.values():
        redirect(value, fake_root, demo_root, shards)


@pytest.fixture(scope='module')
def stand_ins(tmp_path_factory, demo_root):
    root = tmp_path_factory.mktemp('stand_ins')
    (root / 'meta').mkdir()
    (root / 'meta' / 'train.txt').write_text('n0/a.JPEG 0\nn1/b.JPEG 1\n')
    (root / 'shards').mkdir()
    return str(root), demo_root, one_caption_shards(root / 'shards', 2)


@pytest.mark.parametrize(
    'path', PIPELINE_CONFIGS,
    ids=[osp.relpath(p, REPO) for p in PIPELINE_CONFIGS])
def test_train_dataloader_builds_and_has_a_length(path, stand_ins):
    cfg = Config.fromfile(path)
    loader_cfg = cfg.train_dataloader
    redirect(loader_cfg.dataset, *stand_ins)
    with DefaultScope.overwrite_default_scope(
            cfg.get('default_scope', 'mmpretrain')):
        loader = Runner.build_dataloader(loader_cfg, seed=0)
    assert len(loader) > 0
    length = loader_cfg.dataset.get('length')
    if length is not None:  # streamed: the nominal epoch, in batches
        assert len(loader) == math.ceil(length / loader_cfg.batch_size)
