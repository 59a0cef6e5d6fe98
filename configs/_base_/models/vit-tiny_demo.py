# A ViT small enough for CPU demos: 32x32 input, 4x4 patches (8x8 tokens).
vit_tiny_arch = dict(
    embed_dims=96, num_layers=4, num_heads=4, feedforward_channels=384)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=vit_tiny_arch,
        img_size=32,
        patch_size=4,
        drop_path_rate=0.1,
        out_type='avg_featmap',
        final_norm=True,
    ),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=96,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
    ),
)
