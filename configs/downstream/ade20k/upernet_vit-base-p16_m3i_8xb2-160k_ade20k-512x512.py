# UperNet with an M3I ViT-B/16 on ADE20k (paper Table 12): 512x512 crops,
# 160k iterations at batch 16, AdamW (0.9, 0.999), lr 1e-4, weight decay
# 0.05, linear warm-up for 1500 iterations then linear decay, drop path 0.1,
# relative position embeddings.
#
# Relative position embeddings: mmseg's VisionTransformer has none; its BEiT
# backbone has them but no absolute position embedding, and its MAE backbone
# has both but no q/v biases, so neither holds M3I's ViT exactly.
# mmpretrain's BEiTViT does: with bias=True (full qkv bias),
# use_abs_pos_emb=True (M3I's learned absolute position embedding) and
# layer_scale_init_value=0 (no layer scale) it has mmpretrain ViT's key
# names plus one relative position bias table per layer. M3I has no tables; the converter writes them as zeros (MAE/BEiT's
# initialisation), so fine-tuning starts from exactly the pre-trained ViT:
#   python tools/model_converters/m3i_to_downstream.py \
#       work_dirs/m3i_vitb/epoch_1600.pth \
#       checkpoints/m3i_vit-base-p16_512.pth --img-size 512 --rel-pos-heads 12
#
# Layer-wise lr decay: not given in Table 12; 0.65 as in MAE's ADE20k
# setting (uncertain). Features of layers 4, 6, 8, 12 feed a 4-scale
# pyramid (Feature2Pyramid, strides 4, 8, 16, 32) as in BEiT/MAE; the
# pre-trained final norm (ln1) is not used (the loader reports it as an
# unexpected key).
_base_ = ['../../_base_/datasets/ade20k_512x512.py']
custom_imports = dict(imports=['m3i_mm'], allow_failed_imports=False)
# m3i_mm's Runner (see configs/_base_/default_runtime.py); mmdet's and
# mmseg's tools/train.py build it from runner_type.
runner_type = 'M3IRunner'
default_scope = 'mmseg'
pretrained = 'checkpoints/m3i_vit-base-p16_512.pth'

crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=crop_size),
    backbone=dict(
        type='mmpretrain.BEiTViT',
        arch='base',
        img_size=crop_size,
        patch_size=16,
        out_indices=[3, 5, 7, 11],
        drop_path_rate=0.1,
        bias=True,
        use_abs_pos_emb=True,
        use_rel_pos_bias=True,
        layer_scale_init_value=0.0,
        final_norm=False,
        out_type='featmap',
        norm_cfg=dict(type='LN', eps=1e-6),
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(
        type='Feature2Pyramid',
        embed_dim=768,
        rescales=[4, 2, 1, 0.5],
        norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # mmseg's layer-wise decay for BEiT-style backbones: lr of backbone
    # layer i (0 = embeddings, 13 = decode heads) x 0.65^(13 - i).
    constructor='LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(
        num_layers=12, decay_rate=0.65, decay_type='layer_wise'))

max_iters = 160000
warmup_iters = 1500
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6,
        by_epoch=False,
        begin=0,
        end=warmup_iters),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters),
]
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Runtime (mmseg's defaults).
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='DurableCheckpointHook', by_epoch=False, interval=16000,
        max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    # Stops at a NaN/inf loss or parameter (see default_runtime.py).
    finite_check=dict(type='mmpretrain.FiniteCheckHook'))
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
