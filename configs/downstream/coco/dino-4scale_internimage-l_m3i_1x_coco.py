# DINO (4 scales) with an InternImage-L backbone on COCO, 1x schedule: the
# official InternImage recipe (OpenGVLab/InternImage detection/configs/coco/
# dino_4scale_internimage_l_1x_coco.py) on top of mmdet's own
# dino-4scale_r50_8xb2-12e_coco.py (inherited through the package scope).
# From the official config: InternImage-L stages 2-4 (320/640/1280
# channels) into the ChannelMapper, drop path 0.4, AdamW lr 1e-4 with the
# backbone at 0.1x, weight decay 0.05, gradient clipping 0.1, linear
# warm-up over 500 iterations from 0.001, step at epoch 11, 8 GPUs x 2
# images. Everything else (900 queries, 6+6 layers, DETR augmentation,
# losses, matcher) is mmdet's DINO config, which the official one mirrors.
# The backbone starts from an M3I InternImage-L (set init_cfg or load_from).
_base_ = ['mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py']
custom_imports = dict(imports=['m3i_mm'], allow_failed_imports=False)
# m3i_mm's Runner (see configs/_base_/default_runtime.py); mmdet's and
# mmseg's tools/train.py build it from runner_type.
runner_type = 'M3IRunner'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InternImage',
        arch='l',
        out_indices=(1, 2, 3),
        drop_path_rate=0.4,
        with_cp=False,
        init_cfg=None),
    neck=dict(in_channels=[320, 640, 1280]))

optim_wrapper = dict(
    optimizer=dict(lr=1e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
max_epochs = 12
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=False,
        begin=0,
        end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[11],
        gamma=0.1)
]
default_hooks = dict(
    checkpoint=dict(
        type='DurableCheckpointHook', interval=1, max_keep_ckpts=3,
        save_best='auto'),
    # Stops at a NaN/inf loss or parameter (see default_runtime.py).
    finite_check=dict(type='mmpretrain.FiniteCheckHook'))
