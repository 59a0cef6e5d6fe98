# M3I on the embedded demo digits, on CPU: the README's main job.
# Same algorithm as m3i_vitb.py at toy scale: 32x32 views, 4x4 patches
# (8x8 grid), a 4-layer 64-wide ViT, a 2-layer decoder.
_base_ = [
    '../_base_/models/m3i_vit-base-p16.py',
    '../_base_/default_runtime.py',
    '../_base_/precision/fp32.py',  # CPU demo; --amp: bf16 autocast
]
img_size = 32
patch_size = 4
dims = 64

model = dict(
    data_preprocessor=dict(
        mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_rgb=False),
    backbone=dict(
        arch=dict(
            _delete_=True,
            embed_dims=dims,
            num_layers=4,
            num_heads=4,
            feedforward_channels=dims * 4),
        img_size=img_size,
        patch_size=patch_size,
        drop_path_rate=0.0),
    mixer=dict(patch_size=patch_size),
    image_decoder=dict(
        in_channels=dims, out_channels=dims, embed_dims=64, depth=2,
        num_heads=4),
    category_head=dict(in_channels=dims, out_channels=dims, num_heads=4),
    category_embedding=dict(num_classes=10, embed_dims=dims))

view_aug = [
    dict(
        type='RandomApply',
        transforms=[dict(type='ColorJitter', brightness=0.4, contrast=0.4)],
        prob=0.8),
]
train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(
        type='M3IViews',
        size=img_size,
        crop_scale=(0.4, 1.0),
        flip_prob=0.0,  # mirrored digits are other symbols
        target_view_transforms=view_aug,
        other_view_transforms=view_aug),
    dict(
        type='BlockwiseMaskGenerator',
        input_size=img_size,
        patch_size=patch_size,
        mask_ratio=0.5,
        min_num_patches=4),
    dict(
        type='PackInputs',
        algorithm_keys=['view_boxes', 'view_flips']),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='DemoDigits',
        data_root='data/demo_digits',
        split='train',
        pipeline=train_pipeline))

max_iters = 800
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.95),
                   weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters,
         eta_min=1e-5),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='DurableCheckpointHook', by_epoch=False, interval=200,
                    max_keep_ckpts=1),
    # Held-out top-1 while training (category head, zero-shot, k-NN), on
    # monitor_dataloader; README "Training monitors".
    monitor=dict(type='M3IMonitorHook', interval=100))
# The monitors' held-out split: the 359 validation digits.
monitor_dataloader = dict(
    batch_size=128,
    num_workers=0,
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='DemoDigits',
        data_root='data/demo_digits',
        split='val',
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='PackInputs')]))
log_processor = dict(by_epoch=False)
