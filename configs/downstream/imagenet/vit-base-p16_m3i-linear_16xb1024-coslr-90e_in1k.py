# Linear probe of an M3I ViT-B/16 on ImageNet-1k (paper Table 9): frozen
# backbone, LARS, peak lr 3.2 at batch 16384, 90 epochs with 10 warm-up
# epochs then cosine, weight decay 0. The classifier reads the average of
# the patch tokens after the pre-trained final norm (M3I never trains the
# class token), normalised by a parameter-free BatchNorm as in MAE.
#
# Backbone weights: tools/model_converters/m3i_to_downstream.py (online
# encoder, keys under `backbone.`), see the fine-tuning config.
_base_ = [
    '../../_base_/datasets/imagenet_bs1024_m3i-linear_224.py',
    '../../_base_/default_runtime.py',
]
pretrained = 'checkpoints/m3i_vit-base-p16.pth'

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch='base',
        img_size=224,
        patch_size=16,
        frozen_stages=12,
        out_type='avg_featmap',
        final_norm=True,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(type='ClsBatchNormNeck', input_features=768),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss'),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.01)]))

optim_wrapper = dict(
    type='OptimWrapper',
    # LARS momentum is not given in Table 9; 0.9 as in MAE's linear probe.
    optimizer=dict(type='LARS', lr=3.2, weight_decay=0.0, momentum=0.9))

max_epochs = 90
warmup_epochs = 10
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-4,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs - warmup_epochs,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        eta_min=0.0,
        convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=16384)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(
        type='DurableCheckpointHook', interval=1, max_keep_ckpts=3))
randomness = dict(seed=0, diff_rank_seed=True)
