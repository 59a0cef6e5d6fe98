# Fine-tuning an M3I ViT-B/16 on ImageNet-1k (paper Table 8), following
# mmpretrain's MAE/BEiT fine-tuning recipe: 100 epochs, batch 1024,
# AdamW (0.9, 0.999), peak lr 2e-3, weight decay 0.1, layer-wise lr decay
# 0.65, 5 warm-up epochs then cosine, label smoothing 0.1, drop path 0.1,
# RandAugment 9/0.5, random erasing 0.25, Mixup 0.8 / CutMix 1.0.
#
# Backbone weights: convert the pre-training checkpoint first,
#   python tools/model_converters/m3i_to_downstream.py \
#       work_dirs/m3i_vitb/epoch_1600.pth checkpoints/m3i_vit-base-p16.pth
# (online encoder, keys under `backbone.`), or pass
#   --cfg-options model.backbone.init_cfg.checkpoint=FILE
_base_ = [
    '../../_base_/datasets/imagenet_bs128_m3i-ft_224.py',
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
        drop_path_rate=0.1,
        # Average of the patch tokens with a fresh LayerNorm (ln2), as in
        # MAE's fine-tuning; M3I never trains the class token.
        out_type='avg_featmap',
        final_norm=False,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=2e-5)]),
    # Table 8's "Mixup prob. 0.8 / Cutmix prob. 1.0" are the Beta(α, α)
    # parameters of timm's --mixup 0.8 --cutmix 1.0 (the MAE/BEiT recipe);
    # mmpretrain picks one of the two per batch.
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=2e-3, weight_decay=0.1, eps=1e-8,
        betas=(0.9, 0.999)),
    # lr of layer i (0 = patch embedding, 13 = head) x 0.65^(13 - i)
    constructor='LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=0.65,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={
            '.cls_token': dict(decay_mult=0.0),
            '.pos_embed': dict(decay_mult=0.0),
        }))

max_epochs = 100
warmup_epochs = 5
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
        eta_min=1e-6,
        convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(
        type='DurableCheckpointHook', interval=1, max_keep_ckpts=3))
randomness = dict(seed=0, diff_rank_seed=True)
