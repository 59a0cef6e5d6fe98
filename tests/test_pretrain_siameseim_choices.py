"""Crop scale and gradient clipping are not in the paper: the ImageNet
pre-training configs take SiameseIM's values (OpenGVLab/Siamese-Image-Modeling,
configs/pretrain/dist_sim_base_1600ep.sh: --crop_min 0.08, --clip_grad 1.0)."""
import pytest
from mmengine.config import Config

from conftest import config_path

CONFIGS = ['m3i_vitb.py', 'm3i_vitb_400e.py', 'm3i_vitl.py',
           'm3i_vitb_yfcc15m.py', 'm3i_internimage-h.py',
           'm3i_internimage-h_multisource.py', 'm3i_internimage-h_fsdp.py']


@pytest.mark.parametrize('name', CONFIGS)
def test_siameseim_crop_scale_and_clip_grad(name):
    cfg = Config.fromfile(config_path('pretrain', name))
    assert cfg.optim_wrapper.clip_grad.max_norm == 1.0
    dataset = cfg.train_dataloader.dataset
    pipelines = [s.pipeline for s in dataset.sources] \
        if 'sources' in dataset else [dataset.pipeline]
    for pipeline in pipelines:
        (views, ) = [t for t in pipeline if t.type == 'M3IViews']
        assert tuple(views.crop_scale) == (0.08, 1.0)
