# The fine-tuning recipe of vit-base-p16_m3i-ft_8xb128-coslr-100e_in1k.py
# (layer-wise lr decay, RandAugment, random erasing, Mixup/CutMix, label
# smoothing) on the embedded demo digits, on CPU, in a few iterations: the
# tiny ViT of configs/pretrain/m3i_vit-tiny_demo.py (4 layers, 64 wide,
# 4-pixel patches on 32x32). Fine-tune the demo M3I model with
#   python tools/model_converters/m3i_to_downstream.py \
#       work_dirs/m3i_vit-tiny_demo/iter_800.pth work_dirs/m3i_tiny.pth
#   python tools/train.py THIS_CONFIG \
#       --cfg-options load_from=work_dirs/m3i_tiny.pth
# (the backbone.* keys load, the new head keeps its initialisation; without
# it: a randomly initialised backbone).
_base_ = ['./vit-base-p16_m3i-ft_8xb128-coslr-100e_in1k.py']
img_size = 32
dims = 64

data_preprocessor = dict(
    num_classes=10, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False)
model = dict(
    backbone=dict(
        arch=dict(
            _delete_=True,
            embed_dims=dims,
            num_layers=4,
            num_heads=4,
            feedforward_channels=dims * 4),
        img_size=img_size,
        patch_size=4,
        init_cfg=None),
    head=dict(num_classes=10, in_channels=dims))

# Table 8's augmentation at 32x32; no flips (mirrored digits are other
# symbols), black padding.
train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=img_size,
         crop_ratio_range=(0.6, 1.0), backend='pillow',
         interpolation='bicubic'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[0, 0, 0], interpolation='bicubic')),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=[127.5] * 3,
        fill_std=[127.5] * 3),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    pin_memory=False,
    dataset=dict(
        _delete_=True,
        type='DemoDigits',
        data_root='data/demo_digits',
        split='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=128,
    num_workers=2,
    pin_memory=False,
    dataset=dict(
        _delete_=True,
        type='DemoDigits',
        data_root='data/demo_digits',
        split='val',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='TieAwareAccuracy', topk=(1, ))
test_evaluator = val_evaluator

max_iters = 30
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=5),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=5, end=max_iters,
         eta_min=1e-5),
]
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
