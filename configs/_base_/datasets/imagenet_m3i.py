# ImageNet-1k for M3I pre-training: two views per image (target view and
# another view, each with its crop box and flip) and a 50% blockwise mask
# (Table 7). Which view gets which photometric augmentation: see below.
#
# The data workers only decode (at reduced JPEG scale where both crops allow
# it), crop, flip and mask: M3IViews reads the file itself. The photometric
# augmentation of each view (view_transforms, one list per view) runs batched
# on the training device in M3IDataPreprocessor; a config using this file
# sets model.data_preprocessor.view_transforms={{_base_.view_transforms}}.
# The per-image path (photometric augmentation in the workers) is
# per_image_pipeline with view_transforms=None (see
# configs/pretrain/m3i_vitb_per-image-aug.py).
dataset_type = 'ImageNet'
data_root = 'data/imagenet/'
img_size = 224
patch_size = 16
# RandomResizedCrop scale of both views: not in the paper (Table 7 names
# RandomResizedCrop only); SiameseIM's pre-training [67] uses --crop_min
# 0.08 (OpenGVLab/Siamese-Image-Modeling,
# configs/pretrain/dist_sim_base_1600ep.sh).
crop_scale = (0.08, 1.0)

# Photometric augmentation of the two views (Table 7: ColorJitter,
# RandomGrayscale, GaussianBlur, Solarize), asymmetric as in SiameseIM [67]
# (after BYOL): its online (input) view is always blurred, its target view
# rarely blurred and sometimes solarized. Here view 1 (the other view) is
# only ever an input (the second image of a mix), while view 0 (the target
# view) is what the momentum encoder encodes for both images' targets, so
# view 1 gets the online augmentation and view 0 the target one.
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
# View 0, target view (momentum encoder; also the first image's input):
# rarely blurred, solarized (SiameseIM's target view).
target_view_aug = color_aug + [
    dict(type='GaussianBlur', magnitude_range=(0.1, 2.0),
         magnitude_std='inf', prob=0.1),
    dict(type='Solarize', thr=128, prob=0.2),
]
# View 1, other view (input of the second image): always blurred
# (SiameseIM's online view).
other_view_aug = color_aug + [
    dict(type='GaussianBlur', magnitude_range=(0.1, 2.0),
         magnitude_std='inf', prob=1.0),
]

view_transforms = [target_view_aug, other_view_aug]
views = dict(
    type='M3IViews',
    size=img_size,
    crop_scale=crop_scale,
    flip_prob=0.5,
    interpolation='bicubic')
mask_and_pack = [
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
train_pipeline = [views] + mask_and_pack
per_image_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(
        views,
        target_view_transforms=target_view_aug,
        other_view_transforms=other_view_aug),
] + mask_and_pack

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

# Held-out split of the training monitors (M3IMonitorHook): ImageNet val,
# resized and centre-cropped as for evaluation.
monitor_dataloader = dict(
    batch_size=256,
    num_workers=8,
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='ResizeEdge', scale=256, edge='short',
                 interpolation='bicubic'),
            dict(type='CenterCrop', crop_size=img_size),
            dict(type='PackInputs')
        ]))
