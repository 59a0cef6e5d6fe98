# InternImage-T image classifier: the official classifier
# layout, i.e. the stage-4 output widened by the 1x1 conv + BN + GELU
# projection (out_indices=(4, ), 768 channels), average-pooled, then a linear
# layer. Include it with the demo data and runtime configs; it trains on CPU
# (the DCNv3 core falls back to pure PyTorch without the CUDA extension).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='InternImage',
        arch='t',
        out_indices=(4, ),
        drop_path_rate=0.1,
    ),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss'),
    ),
)
