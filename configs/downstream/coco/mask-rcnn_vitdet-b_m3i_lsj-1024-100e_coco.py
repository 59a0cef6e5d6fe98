# Mask R-CNN with an M3I ViT-B/16 as ViTDet backbone on COCO (paper
# Table 10): large-scale jitter at 1024x1024, 100 epochs at batch 64,
# AdamW (0.9, 0.999), lr 1e-4, step schedule, 250 warm-up iterations,
# weight decay 0.1, drop path 0.1, relative position embeddings.
#
# The architecture is ViTDet-B's (Li et al. 2022): windowed attention
# (14x14) with global attention in blocks 2, 5, 8, 11, decomposed relative
# position tables, a single stride-16 map turned into strides 4-64 by the
# simple feature pyramid (SimpleFPN, LayerNorm), a 2-conv RPN head, a
# 4conv1fc box head and a mask head with LayerNorm.
#
# Weights: the converter drops the class token and final norm, resizes the
# absolute position embedding to the 64x64 grid of 1024 inputs and writes
# zero relative position tables (ViTDet's initialisation), so fine-tuning
# starts from exactly the pre-trained ViT (see tests/test_vitdet.py):
#   python tools/model_converters/m3i_to_downstream.py \
#       work_dirs/m3i_vitb/epoch_1600.pth checkpoints/m3i_vitdet-b_1024.pth \
#       --layout vitdet --img-size 1024 --rel-pos-heads 12
#
# Our choices where Table 10 is silent (ViTDet's COCO recipe): layer-wise
# lr decay 0.7; step decays x0.1 at 88.9 % and 96.3 % of training
# (iterations 163889 and 177546 of 184375 = 100 epochs of the 118k images
# at batch 64); warm-up from 0.001 x lr; no weight decay on norms and the
# absolute position embedding; test images resized to 1024 (longer side)
# and padded to 1024x1024.
custom_imports = dict(imports=['m3i_mm'], allow_failed_imports=False)
# m3i_mm's Runner (see configs/_base_/default_runtime.py); mmdet's and
# mmseg's tools/train.py build it from runner_type.
runner_type = 'M3IRunner'
default_scope = 'mmdet'
pretrained = 'checkpoints/m3i_vitdet-b_1024.pth'

image_size = (1024, 1024)
norm_cfg = dict(type='mmpretrain.LN2d', eps=1e-6)  # channel-wise LayerNorm
num_classes = 80
model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_mask=True,
        pad_size_divisor=32,
        # LSJ crops smaller than 1024 are padded to a square batch.
        batch_augments=[
            dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)
        ]),
    backbone=dict(
        type='ViTDet',
        arch='base',
        img_size=image_size,
        patch_size=16,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
        use_rel_pos=True,
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(
        type='SimpleFPN',
        backbone_channel=768,
        in_channels=[192, 384, 768, 768],
        out_channels=256,
        num_outs=5,
        norm_cfg=norm_cfg),
    rpn_head=dict(
        type='RPNHead',
        in_channels=256,
        feat_channels=256,
        num_convs=2,
        anchor_generator=dict(
            type='AnchorGenerator',
            scales=[8],
            ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(
            type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=num_classes,
            norm_cfg=norm_cfg,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes=num_classes,
            norm_cfg=norm_cfg,
            loss_mask=dict(
                type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    # mmdet's Mask R-CNN defaults.
    train_cfg=dict(
        rpn=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                pos_iou_thr=0.7,
                neg_iou_thr=0.3,
                min_pos_iou=0.3,
                match_low_quality=True,
                ignore_iof_thr=-1),
            sampler=dict(
                type='RandomSampler',
                num=256,
                pos_fraction=0.5,
                neg_pos_ub=-1,
                add_gt_as_proposals=False),
            allowed_border=-1,
            pos_weight=-1,
            debug=False),
        rpn_proposal=dict(
            nms_pre=2000,
            max_per_img=1000,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0),
        rcnn=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                pos_iou_thr=0.5,
                neg_iou_thr=0.5,
                min_pos_iou=0.5,
                match_low_quality=True,
                ignore_iof_thr=-1),
            sampler=dict(
                type='RandomSampler',
                num=512,
                pos_fraction=0.25,
                neg_pos_ub=-1,
                add_gt_as_proposals=True),
            mask_size=28,
            pos_weight=-1,
            debug=False)),
    test_cfg=dict(
        rpn=dict(
            nms_pre=1000,
            max_per_img=1000,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0),
        rcnn=dict(
            score_thr=0.05,
            nms=dict(type='nms', iou_threshold=0.5),
            max_per_img=100,
            mask_thr_binary=0.5)))

# Large-scale jitter (mmdet's common/lsj-100e_coco-instance.py): resize by
# 0.1-2.0 of 1024, crop 1024, flip.
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
backend_args = None
train_pipeline = [
    dict(type='NamedLoadImageFromFile', backend_args=backend_args),
    dict(type='NamedLoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='RandomResize',
        scale=image_size,
        ratio_range=(0.1, 2.0),
        keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,  # x 8 GPUs = 64
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val2017.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator

# AdamW, lr 1e-4 at batch 64, wd 0.1; layer-wise lr decay 0.7 over the 12
# blocks (embeddings 0.7^13, block i 0.7^(12 - i), neck and heads 1).
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='BackboneLayerDecayOptimWrapperConstructor',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(
        layer_decay_rate=0.7,
        norm_decay_mult=0.0,
        custom_keys={'pos_embed': dict(decay_mult=0.0)}),
    clip_grad=None)

max_iters = 184375  # 100 epochs x 118k images / 64
warmup_iters = 250
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=False,
        begin=0,
        end=warmup_iters),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[163889, 177546],
        gamma=0.1)
]
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=18438)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=64)

# Runtime (mmdet's defaults, iteration-based).
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='DurableCheckpointHook', by_epoch=False, interval=18438,
        max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'),
    # Stops at a NaN/inf loss or parameter (see default_runtime.py).
    finite_check=dict(type='mmpretrain.FiniteCheckHook'))
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
