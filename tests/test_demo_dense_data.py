"""Dense demo data: digit canvases in the COCO and ADE20k layouts."""
import json
import os.path as osp
from collections import Counter

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from sklearn.datasets import load_digits

from conftest import config_path
from m3i_mm.datasets import DIGIT_CLASSES, demo_digits_split
from m3i_mm.datasets.demo.detection import (DemoDigitsCoco, upscale_digit,
                                            materialize_demo_digits_coco)
from m3i_mm.datasets.demo.segmentation import (DemoDigitsSeg,
                                               materialize_demo_digits_ade)

COUNTS = {'train': (200, 390), 'val': (50, 97)}  # images, instances
VAL_PER_DIGIT = [7, 7, 9, 18, 9, 7, 12, 10, 11, 7]


def load_json(root, split):
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        return json.load(f)


def read_png(path):
    return np.asarray(Image.open(path))


def test_documented_counts_and_disjoint_digit_split(coco_root):
    used = {}
    for split, (n_img, n_inst) in COUNTS.items():
        ann = load_json(coco_root, split)
        assert len(ann['images']) == n_img
        assert len(ann['annotations']) == n_inst
        per_image = Counter(a['image_id'] for a in ann['annotations'])
        assert set(per_image.values()) == {1, 2, 3}
        assert len(per_image) == n_img
        used[split] = [a['digit_index'] for a in ann['annotations']]
        assert len(set(used[split])) == n_inst  # each scan used once
        assert set(used[split]) <= set(demo_digits_split(split))
    assert not set(used['train']) & set(used['val'])
    per_digit = Counter(a['category_id'] - 1
                        for a in load_json(coco_root, 'val')['annotations'])
    assert [per_digit[d] for d in range(10)] == VAL_PER_DIGIT


def test_masks_are_the_digits_bright_pixels_and_boxes_are_tight(coco_root):
    digits = load_digits()
    ann = load_json(coco_root, 'val')
    assert [c['name'] for c in ann['categories']] == list(DIGIT_CLASSES)
    by_image = {}
    for a in ann['annotations']:
        by_image.setdefault(a['image_id'], []).append(a)
    for info in ann['images']:
        img = read_png(osp.join(coco_root, 'val', info['file_name']))
        assert img.shape == (96, 96, 3)
        assert (img[..., 0] == img[..., 1]).all()
        union = np.zeros((96, 96), dtype=int)
        for a in by_image[info['id']]:
            mask = mask_utils.decode(a['segmentation']).astype(bool)
            union += mask
            assert a['area'] == mask.sum()
            ys, xs = np.nonzero(mask)
            x, y, w, h = a['bbox']
            # Tight: inside the box and touching all four of its sides.
            assert (xs.min(), ys.min()) == (x, y)
            assert (xs.max(), ys.max()) == (x + w - 1, y + h - 1)
            # The real scan: category, pixels and mask inside the box.
            index = a['digit_index']
            assert a['category_id'] - 1 == digits.target[index]
            scan = upscale_digit(digits.images[index], a['digit_scale'])
            sy, sx = np.nonzero(scan > 64)
            scan_box = scan[sy.min():sy.max() + 1, sx.min():sx.max() + 1]
            assert np.array_equal(img[y:y + h, x:x + w, 0], scan_box)
            assert np.array_equal(mask[y:y + h, x:x + w], scan_box > 64)
        assert union.max() == 1  # instances do not overlap
        assert np.array_equal(union.astype(bool), img[..., 0] > 64)


def test_pycocotools_and_mmdet_coco_dataset_read_it(coco_root):
    coco = COCO(osp.join(coco_root, 'annotations', 'instances_val.json'))
    assert coco.getCatIds(catNms=['zero', 'nine']) == [1, 10]
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    assert coco.annToMask(first).sum() == first['area']

    with DefaultScope.overwrite_default_scope('mmdet'):
        ds = DemoDigitsCoco(
            data_root=coco_root,
            split='val',
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='PackDetInputs')
            ])
        assert len(ds) == 50
        assert sum(len(ds.get_data_info(i)['instances'])
                   for i in range(len(ds))) == 97
        sample = ds[0]['data_samples']
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    gt = sample.gt_instances
    assert gt.labels.tolist() == [a['category_id'] - 1 for a in anns]
    x, y, w, h = anns[0]['bbox']
    assert gt.bboxes.tensor[0].tolist() == [x, y, x + w, y + h]
    assert np.array_equal(gt.masks.masks[0], coco.annToMask(anns[0]))
    with pytest.raises(ValueError, match="'test'"):
        DemoDigitsCoco(data_root=coco_root, split='test')


def test_coco_base_config_and_metric_score_ground_truth_as_perfect(
        coco_root):
    """mmdet's CocoMetric (COCOeval) on our json: the ground truth itself,
    read back through the dataset config, scores 1.0 box and mask mAP."""
    from mmdet.registry import DATASETS, METRICS
    cfg = Config.fromfile(
        config_path('_base_', 'datasets', 'demo_digits_coco.py'))
    cfg.val_dataloader.dataset.data_root = coco_root
    with DefaultScope.overwrite_default_scope('mmdet'):
        ds = DATASETS.build(cfg.val_dataloader.dataset)
        metric = METRICS.build(
            dict(cfg.val_evaluator,
                 ann_file=osp.join(coco_root, 'annotations',
                                   'instances_val.json')))
        metric.dataset_meta = ds.metainfo
        for i in range(len(ds)):
            sample = ds[i]['data_samples']
            gt = sample.gt_instances
            metric.process({}, [
                dict(
                    img_id=sample.img_id,
                    ori_shape=sample.ori_shape,
                    pred_instances=dict(
                        bboxes=gt.bboxes.tensor,
                        labels=gt.labels,
                        scores=torch.ones(len(gt.labels)),
                        masks=torch.from_numpy(gt.masks.masks).bool()))
            ])
        result = metric.evaluate(len(ds))
    assert result['coco/bbox_mAP'] == 1.0
    assert result['coco/segm_mAP'] == 1.0


def test_seg_label_maps_hold_exactly_the_placed_digits(coco_root, ade_root):
    coco = COCO(osp.join(coco_root, 'annotations', 'instances_val.json'))
    for image_id in coco.getImgIds():
        name = coco.loadImgs([image_id])[0]['file_name']
        labels = read_png(osp.join(ade_root, 'annotations', 'validation',
                                   name))
        assert labels.dtype == np.uint8 and labels.shape == (96, 96)
        expected = np.zeros((96, 96), dtype=np.uint8)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            expected[coco.annToMask(a).astype(bool)] = a['category_id']
        assert np.array_equal(labels, expected)  # 0 background, digit + 1
        img = read_png(osp.join(ade_root, 'images', 'validation', name))
        assert np.array_equal(
            img, read_png(osp.join(coco_root, 'val', name)))


def test_mmseg_ade_dataset_reduces_zero_label(ade_root):
    with DefaultScope.overwrite_default_scope('mmseg'):
        ds = DemoDigitsSeg(
            data_root=ade_root,
            split='train',
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')
            ])
        assert len(ds) == 200
        assert len(DemoDigitsSeg(data_root=ade_root, split='val')) == 50
        assert ds.metainfo['classes'] == DIGIT_CLASSES
        sample = ds[3]
    raw = read_png(
        osp.join(ade_root, 'annotations', 'training', 'canvas_00003.png'))
    gt = sample['data_samples'].gt_sem_seg.data[0].numpy()
    expected = np.where(raw == 0, 255, raw.astype(int) - 1)
    assert np.array_equal(gt, expected)
    digits = {int(v) - 1 for v in np.unique(raw) if v}
    assert digits and set(np.unique(gt).tolist()) == digits | {255}


def test_materialize_is_idempotent_and_checks_folder(coco_root, tmp_path):
    assert materialize_demo_digits_coco(coco_root) == coco_root
    junk = tmp_path / 'not_demo'
    junk.mkdir()
    (junk / 'other.txt').write_text('x')
    with pytest.raises(FileExistsError, match='not_demo'):
        materialize_demo_digits_ade(str(junk))
