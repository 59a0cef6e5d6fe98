# The linear-probe recipe of vit-base-p16_m3i-linear_16xb1024-coslr-90e_in1k.py
# (frozen backbone, patch-token average, BatchNorm, LARS) on the embedded
# demo digits, on CPU, in a few iterations, with the tiny ViT of
# configs/pretrain/m3i_vit-tiny_demo.py. Load converted M3I weights with
# --cfg-options load_from=FILE, as in vit-tiny_m3i-ft_demo.py.
_base_ = ['./vit-base-p16_m3i-linear_16xb1024-coslr-90e_in1k.py']
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
        frozen_stages=4,
        init_cfg=None),
    neck=dict(input_features=dims),
    head=dict(num_classes=10, in_channels=dims))

# No flips: mirrored digits are other symbols.
train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=img_size,
         crop_ratio_range=(0.6, 1.0), backend='pillow',
         interpolation='bicubic'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=64,
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
         eta_min=0.0),
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
