"""The pinned OpenMMLab stack imports and its compiled ops run on CPU."""
import importlib

import numpy as np
import pytest
import torch


def test_mmcv_ops_nms_runs_on_cpu():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.],
                          [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    # Box 1 overlaps box 0 with IoU 81/119 > 0.5 and is suppressed.
    assert keep.tolist() == [0, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.9, 0.7]))


def test_mmcv_roi_align_runs_on_cpu():
    from mmcv.ops import roi_align
    feat = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    out = roi_align(feat, rois, (1, 1), 1.0, 2, 'avg', True)
    # The average of the bilinear samples over the whole map is its mean.
    assert out.item() == pytest.approx(feat.mean().item(), abs=1e-5)


@pytest.mark.parametrize('name', [
    'mmengine', 'mmcv', 'mmdet', 'mmdet.models', 'mmdet.datasets.transforms',
    'mmseg', 'mmseg.models', 'mmpretrain', 'mmpretrain.models',
    'transformers', 'pycocotools.coco', 'torchvision.ops'
])
def test_libraries_import(name):
    importlib.import_module(name)


def test_torchvision_nms_runs_on_cpu():
    from torchvision.ops import nms
    keep = nms(torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]),
               torch.tensor([0.5, 0.9]), 0.5)
    assert keep.tolist() == [1]


def test_numpy2_aliases_restored_by_compat():
    assert hasattr(np, 'sctypes') and np.float64 in np.sctypes['float']
    assert np.in1d([1, 4], [4]).tolist() == [False, True]


def test_plugin_registers_into_parent_registries():
    from mmpretrain.registry import DATASETS
    assert DATASETS.get('DemoDigits') is not None


def test_package_scoped_base_configs_resolve_with_the_onedl_line(tmp_path):
    """`_base_ = 'mmseg::...'` needs the onedl- distribution mapping."""
    from mmengine.config import Config
    cfg_file = tmp_path / 'child.py'
    cfg_file.write_text("_base_ = 'mmseg::mask2former/"
                        "mask2former_r50_8xb2-160k_ade20k-512x512.py'\n")
    assert Config.fromfile(str(cfg_file)).model.type == 'EncoderDecoder'
