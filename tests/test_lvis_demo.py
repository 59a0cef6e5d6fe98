"""The long-tailed LVIS-layout demo data and the LVIS demo config (federated
loss, repeat factor sampling, LVISMetric) through mmdet's own code."""
import json
import os.path as osp
from collections import Counter

import numpy as np
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS, DefaultScope
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import config_path
from m3i_mm.datasets.demo.lvis import LVIS_TRAIN_QUOTA, lvis_frequency

LVIS_DEMO = config_path('downstream', 'lvis',
                        'mask-rcnn_vitdet-tiny_m3i_lvis_demo.py')


class LossProbe(Hook):
    """Records the total loss of each training step."""

    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses.append(float(outputs['loss']))


def load(root, split):
    with open(osp.join(root, 'annotations', f'lvis_v1_{split}.json')) as f:
        return json.load(f)


def test_frequency_rule():
    assert [lvis_frequency(n) for n in (1, 10, 11, 100, 101)] == \
        ['r', 'r', 'c', 'c', 'f']


def test_long_tail_counts_and_lvis_fields(lvis_root):
    train, val = load(lvis_root, 'train'), load(lvis_root, 'val')
    assert (len(train['images']), len(train['annotations'])) == (266, 531)
    assert (len(val['images']), len(val['annotations'])) == (50, 97)
    instances = Counter(a['category_id'] - 1 for a in train['annotations'])
    assert [instances[d] for d in range(10)] == list(LVIS_TRAIN_QUOTA)
    images = Counter()
    for image_id in {a['image_id'] for a in train['annotations']}:
        images.update({a['category_id'] - 1 for a in train['annotations']
                       if a['image_id'] == image_id})
    counts = [images[d] for d in range(10)]
    assert counts == [105, 104, 112, 57, 38, 25, 15, 8, 5, 3]
    for cats in (train['categories'], val['categories']):
        assert [c['image_count'] for c in cats] == counts
        assert ''.join(c['frequency'] for c in cats) == 'fffccccrrr'
    # The demo config lists the same counts for the federated loss.
    cfg = Config.fromfile(LVIS_DEMO)
    assert cfg.model.roi_head.bbox_head.loss_cls.class_image_counts == counts
    # Exhaustive annotation: every absent digit is a verified negative.
    for ann in (train, val):
        present = {}
        for a in ann['annotations']:
            present.setdefault(a['image_id'], set()).add(a['category_id'])
        for image in ann['images']:
            assert image['not_exhaustive_category_ids'] == []
            assert set(image['neg_category_ids']) == \
                set(range(1, 11)) - present[image['id']]
            assert image['coco_url'].startswith(
                'http://images.cocodataset.org/')
    # Paths come from coco_url; masks are the canvas's bright pixels.
    image = val['images'][0]
    rel = image['coco_url'][len('http://images.cocodataset.org/'):]
    pixels = np.asarray(Image.open(osp.join(lvis_root, rel)))[..., 0]
    union = sum(
        mask_utils.decode(a['segmentation']).astype(int)
        for a in val['annotations'] if a['image_id'] == image['id'])
    assert np.array_equal(union > 0, pixels > 64)


def test_lvis_demo_trains_and_evaluates(lvis_root, tmp_path):
    cfg = Config.fromfile(LVIS_DEMO)
    cfg.work_dir = str(tmp_path)
    cfg.train_dataloader.dataset.dataset.data_root = lvis_root
    cfg.val_dataloader.dataset.data_root = lvis_root
    cfg.test_dataloader = cfg.val_dataloader
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.val_evaluator.ann_file = lvis_root + '/annotations/lvis_v1_val.json'
    cfg.test_evaluator = cfg.val_evaluator
    cfg.val_dataloader.dataset.indices = 6
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 3
    cfg.log_level = 'WARNING'
    with DefaultScope.overwrite_default_scope('mmdet'):
        runner = RUNNERS.build(cfg)
        probe = LossProbe()
        runner.register_hook(probe, priority='LOWEST')
        runner.train()
        metrics = runner.val_loop.run()
        dataset = runner.train_dataloader.dataset
    bbox_head = runner.model.roi_head.bbox_head
    assert bbox_head.fc_cls.out_features == 10  # no background logit
    assert len(probe.losses) == 3 and all(np.isfinite(probe.losses))
    # Repeat factor sampling repeats the rare digits' canvases.
    assert len(dataset) > len(dataset.dataset) == 266
    rare = Counter(i for i in dataset.repeat_indices
                   if 9 in dataset.dataset.get_cat_ids(i))
    assert max(rare.values()) >= 2
    # All three frequency groups exist in val (LVIS reports -1 otherwise).
    for key in ('bbox_AP', 'bbox_APr', 'bbox_APc', 'bbox_APf', 'segm_AP',
                'segm_APr'):
        assert 0.0 <= metrics['lvis/' + key] <= 1.0, key
