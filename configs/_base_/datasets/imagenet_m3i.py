# ImageNet-1k for M3I pre-training: two views per image (target view and
# another view, each with its crop box and flip) and a 50% blockwise mask
# (Table 7). The other view gets the stronger photometric augmentation.
dataset_type = 'ImageNet'
data_root = 'data/imagenet/'
img_size = 224
patch_size = 16

# Photometric augmentation of the two views (Table 7: ColorJitter,
# RandomGrayscale, GaussianBlur, Solarize), asymmetric as in BYOL.
color_aug = [
    dict(
        type='RandomApply',
        transforms=[
            dict(
                type='ColorJitter',
                brightness=0.4,
                contrast=0.4,
                saturation=0.2,
                hue=0.1)
        ],
        prob=0.8),
    dict(
        type='RandomGrayscale',
        prob=0.2,
        keep_channels=True,
        channel_weights=(0.114, 0.587, 0.2989)),
]
# Target view (encoded by the momentum encoder): always blurred.
target_view_aug = color_aug + [
    dict(type='GaussianBlur', magnitude_range=(0.1, 2.0),
         magnitude_std='inf', prob=1.0),
]
# The other view (input of the second image): rarely blurred, solarized.
other_view_aug = color_aug + [
    dict(type='GaussianBlur', magnitude_range=(0.1, 2.0),
         magnitude_std='inf', prob=0.1),
    dict(type='Solarize', thr=128, prob=0.2),
]

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='M3IViews',
        size=img_size,
        crop_scale=(0.2, 1.0),
        flip_prob=0.5,
        interpolation='bicubic',
        target_view_transforms=target_view_aug,
        other_view_transforms=other_view_aug),
    dict(
        type='BlockwiseMaskGenerator',
        input_size=img_size,
        patch_size=patch_size,
        mask_ratio=0.5),
    dict(
        type='PackInputs',
        algorithm_keys=['view_boxes', 'view_flips'],
        meta_keys=['img_path']),
]

train_dataloader = dict(
    batch_size=512,  # x 8 GPUs = 4096 (Table 7)
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        pipeline=train_pipeline))
