"""Evaluation configs of the ablations (Sec. 4.2, App. B.3/B.4): 25-epoch
COCO / LVIS / ADE20k fine-tunes, Table 14's 20-epoch early-stopped ImageNet
fine-tune, Table 4's "w/o fine-tuning" test and Flickr30K zero-shot
retrieval; the demo twins run for real through tools/test.py."""
import json
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from conftest import REPO, config_path

# config: (max iters or epochs, [(scheduler, begin, end, milestones)], val)
SCHEDULES = {
    ('coco', 'mask-rcnn_vitdet-b_m3i_lsj-1024-25e_coco.py'):
        (46093, [('LinearLR', 0, 250, None),
                 ('MultiStepLR', 0, 46093, [40972, 44386])], 9219),
    ('lvis', 'mask-rcnn_vitdet-b_m3i_lsj-1024-25e_lvis.py'):
        (39062, [('LinearLR', 0, 250, None),
                 ('MultiStepLR', 0, 39062, [34722, 37615])], 7813),
    ('ade20k', 'upernet_vit-base-p16_m3i_8xb2-25e_ade20k-512x512.py'):
        (31579, [('LinearLR', 0, 1500, None),
                 ('PolyLR', 1500, 31579, None)], 6316),
    ('imagenet', 'vit-base-p16_m3i-ft_8xb128-coslr-100e-stop20e_in1k.py'):
        (20, [('LinearLR', 0, 5, None),
              ('CosineAnnealingLR', 5, 100, None)], 1),
}
IMAGES = {'coco': 118287, 'lvis': 100170, 'ade20k': 20210}
BATCH = {'coco': 64, 'lvis': 64, 'ade20k': 16}


@pytest.mark.parametrize('key', list(SCHEDULES))
def test_ablation_schedules_match_the_paper(key):
    cfg = Config.fromfile(config_path('downstream', *key))
    length, schedulers, val = SCHEDULES[key]
    loop = cfg.train_cfg
    got = loop.get('max_iters', loop.get('max_epochs'))
    assert got == length
    assert [(s.type, s.begin, s.end, s.get('milestones'))
            for s in cfg.param_scheduler] == schedulers
    assert loop.val_interval == val
    if key[0] in IMAGES:  # 25 epochs (ViTDet's 100e // 4 on COCO / LVIS)
        assert length * BATCH[key[0]] / IMAGES[key[0]] == pytest.approx(
            25, rel=0.01)
        assert cfg.default_hooks.checkpoint.interval == val
    else:  # stops at 20 of the 100-epoch cosine
        assert cfg.param_scheduler[1].T_max == 95


def test_full_eval_configs_load():
    wo_ft = Config.fromfile(config_path(
        'downstream', 'imagenet', 'm3i_vitb_wo-ft_in1k.py'))
    assert wo_ft.test_evaluator.type == 'TieAwareAccuracy'
    assert wo_ft.test_dataloader.dataset.split == 'val'
    assert wo_ft.model.category_head is not None
    flickr = Config.fromfile(config_path(
        'downstream', 'flickr30k',
        'm3i_internimage-h_zero-shot-retrieval_flickr30k.py'))
    ds = flickr.test_dataloader.dataset
    assert (ds.type, ds.split, ds.test_mode) == (
        'mmpretrain.Flickr30kRetrieval', 'test', True)
    assert flickr.test_evaluator == dict(type='ImageTextRetrieval',
                                         topk=(1, 5, 10))
    assert flickr.model.text_target is not None


def run_test_py(cfg, ckpt, tmp_path, *options):
    out = tmp_path / 'metrics.json'
    res = subprocess.run(
        [sys.executable, 'tools/test.py', cfg, str(ckpt), '--work-dir',
         str(tmp_path / 'work'), '--out', str(out), '--cfg-options',
         *options], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


def demo_model_and_loader(cfg_file, options):
    from mmengine.runner import Runner
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(cfg_file)
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    return model, Runner.build_dataloader(cfg.test_dataloader)


def test_wo_ft_demo_accuracy_equals_the_model_predictions(demo_root,
                                                          tmp_path):
    cfg = config_path('downstream', 'imagenet', 'm3i_vit-tiny_wo-ft_demo.py')
    options = {'test_dataloader.dataset.data_root': demo_root}
    model, loader = demo_model_and_loader(cfg, options)
    ckpt = tmp_path / 'demo.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            for s in model.test_step(batch):
                correct += int(s.pred_score.argmax() == s.gt_label[0])
                total += 1
    metrics = run_test_py(cfg, ckpt, tmp_path,
                          *[f'{k}={v}' for k, v in options.items()])
    assert total == 359
    assert metrics['accuracy/top1'] == pytest.approx(100 * correct / total)


def test_retrieval_demo_recall_equals_a_direct_computation(tmp_path):
    from m3i_mm.datasets import materialize_demo_digits_karpathy
    root = materialize_demo_digits_karpathy(str(tmp_path / 'karpathy'))
    cfg = config_path('downstream', 'flickr30k',
                      'm3i_vit-tiny_retrieval_demo.py')
    options = {'test_dataloader.dataset.data_root': root,
               'test_dataloader.dataset.indices': 24}
    model, loader = demo_model_and_loader(cfg, options)
    ckpt = tmp_path / 'demo.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    images, texts, owner = [], [], []
    with torch.no_grad():
        for batch in loader:
            for s in model.test_step(batch):
                assert s.text_embedding.shape[0] == 4  # 4 captions
                owner += [len(images)] * 4
                images.append(s.image_embedding)
                texts.append(s.text_embedding)
    sim = torch.stack(images).double() @ torch.cat(texts).double().t()
    expected = {}
    for k in (1, 5, 10):
        i2t = [sorted(range(sim.shape[1]), key=lambda t: -sim[i, t])[:k]
               for i in range(len(images))]
        expected[f'retrieval/i2t_R@{k}'] = 100 * sum(
            any(owner[t] == i for t in top) for i, top in enumerate(i2t)
        ) / len(images)
        t2i = [sorted(range(len(images)), key=lambda i: -sim[i, t])[:k]
               for t in range(sim.shape[1])]
        expected[f'retrieval/t2i_R@{k}'] = 100 * sum(
            owner[t] in top for t, top in enumerate(t2i)) / sim.shape[1]
        expected[f'retrieval/mean_R@{k}'] = (
            expected[f'retrieval/i2t_R@{k}'] +
            expected[f'retrieval/t2i_R@{k}']) / 2
    metrics = run_test_py(cfg, ckpt, tmp_path,
                          *[f'{k}={v}' for k, v in options.items()])
    assert metrics == pytest.approx(expected)
    assert 0 < expected['retrieval/i2t_R@5'] < 100


def test_retrieval_metric_with_several_captions_per_image():
    """Flickr30K's protocol: an image hits when any of its captions ranks
    within K; each caption retrieves its own image. Image 0's captions: one
    on its axis, one on image 1's; image 1's single caption is on axis 2."""
    from m3i_mm.evaluation.metrics import ImageTextRetrieval
    metric = ImageTextRetrieval(topk=(1, 2))
    eye = torch.eye(3)
    metric.process(None, [
        dict(image_embedding=eye[0], text_embedding=torch.stack([eye[0],
                                                                 eye[1]])),
        dict(image_embedding=eye[1] + 0.1 * eye[2], text_embedding=eye[2]),
    ])
    out = metric.compute_metrics(metric.results)
    # i2t: image 0 -> its caption 0 first (hit); image 1 -> image 0's
    # caption 1 first, its own second.
    assert (out['i2t_R@1'], out['i2t_R@2']) == (50.0, 100.0)
    # t2i: caption 0 -> image 0 (hit); caption 1 -> image 1 (miss);
    # caption 2 -> image 1 (hit).
    assert out['t2i_R@1'] == pytest.approx(200 / 3)
