"""Two sources in one stage: image-category and image-text demo digits."""
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS

from conftest import config_path
from m3i_mm.datasets import DemoDigitsCaptions


def test_caption_source_has_captions_and_no_labels(demo_root):
    ds = DemoDigitsCaptions(data_root=demo_root, split='train',
                            pipeline=[dict(type='LoadImageFromFile'),
                                      dict(type='PackInputs',
                                           meta_keys=['caption'])])
    sample = ds[1]['data_samples']
    assert sample.caption == 'a scan of the digit one.'  # digit 1, template 1
    assert 'gt_label' not in sample


def test_multisource_demo_trains_and_evaluates_zero_shot(demo_root, tmp_path):
    cfg = Config.fromfile(
        config_path('pretrain', 'm3i_vit-tiny_multisource_demo.py'))
    cfg.work_dir = str(tmp_path)
    for source in cfg.train_dataloader.dataset.datasets:
        source.data_root = demo_root
    cfg.val_dataloader.dataset.data_root = demo_root
    cfg.val_dataloader.dataset.indices = 64
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.num_workers = 0
        loader.persistent_workers = False
    cfg.train_dataloader.batch_size = 16
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 3
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint.interval = 3
    cfg.log_level = 'WARNING'
    seen = {}

    class Record(Hook):

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            seen.update(outputs)

        def after_val_epoch(self, runner, metrics=None):
            seen.update(metrics)

    runner = RUNNERS.build(cfg)
    runner.register_hook(Record(), priority='LOWEST')
    runner.train()
    # Both global targets were trained in the same step, next to the image
    # targets, and validation reports zero-shot top-1.
    for key in ('loss_cls', 'loss_text', 'loss_img_first', 'loss_img_second'):
        assert key in seen and seen[key] > 0
    assert 0.0 <= seen['accuracy/top1'] <= 100.0


def test_sources_are_drawn_at_their_ratios(demo_root):
    from itertools import islice

    from m3i_mm.datasets import MultiSourceDataset
    pipeline = [dict(type='PackInputs', meta_keys=['caption'])]
    stream = MultiSourceDataset(
        sources=[
            dict(type='DemoDigits', data_root=demo_root, split='val',
                 pipeline=pipeline, lazy_init=False),
            dict(type='DemoDigitsCaptions', data_root=demo_root,
                 split='val', pipeline=pipeline, indices=20),
        ],
        ratios=[3, 1])
    samples = [s['data_samples'] for s in islice(iter(stream), 2000)]
    with_caption = sum('caption' in s for s in samples) / len(samples)
    assert abs(with_caption - 0.25) < 0.04
    # The small source (20 images) was restarted, in a new order.
    captions = [s.caption for s in samples if 'caption' in s]
    assert len(captions) > 40 and captions[:20] != captions[20:40]
    assert sorted(captions[:20]) == sorted(captions[20:40])
    assert all('gt_label' in s for s in samples if 'caption' not in s)


def test_bad_ratios_are_refused(demo_root):
    import pytest

    from m3i_mm.datasets import MultiSourceDataset
    with pytest.raises(ValueError, match='ratios'):
        MultiSourceDataset(
            sources=[dict(type='DemoDigits', data_root=demo_root)],
            ratios=[1, 2])
