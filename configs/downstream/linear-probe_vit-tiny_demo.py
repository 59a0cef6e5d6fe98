# Linear probe of the demo ViT on the demo digits: frozen backbone, a linear
# classifier on the average of the patch tokens. Load pre-trained weights with
#   --cfg-options model.backbone.init_cfg.type=Pretrained \
#       model.backbone.init_cfg.checkpoint=M3I_CKPT model.backbone.init_cfg.prefix=backbone.
# (the online encoder of an M3I checkpoint); without it: random-init baseline.
_base_ = [
    '../_base_/datasets/demo_digits.py',
    '../_base_/default_runtime.py',
]
dims = 64
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(
            embed_dims=dims, num_layers=4, num_heads=4,
            feedforward_channels=dims * 4),
        img_size=32,
        patch_size=4,
        out_type='avg_featmap',
        final_norm=True,
        frozen_stages=4),
    neck=dict(type='ClsBatchNormNeck', input_features=dims),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=dims,
        loss=dict(type='CrossEntropyLoss')))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.0))
max_iters = 500
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters,
         eta_min=1e-5)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='DurableCheckpointHook', by_epoch=False,
                    interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
