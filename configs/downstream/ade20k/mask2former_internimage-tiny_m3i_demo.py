# The recipe of mask2former_internimage-h_m3i_896-80k_ade20k.py (InternImage
# backbone, Mask2Former with the MSDeformAttn pixel decoder, AdamW, warm-up
# + poly decay, gradient clipping) on the embedded demo canvases
# (m3i_mm.datasets.demo.segmentation, ADE20k layout, 10 digit classes,
# reduce_zero_label), on CPU, in a few iterations: a tiny InternImage
# (16 channels, depths 1/1/2/1) on 64x64 crops, a 32-wide head with one
# pixel-decoder layer, 3 decoder layers, 10 queries and 1024 sampled points.
_base_ = ['./mask2former_internimage-h_m3i_896-80k_ade20k.py']
crop_size = (64, 64)
channels = 16
dims = 32
heads = 4
num_classes = 10

model = dict(
    data_preprocessor=dict(
        mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=False, size=crop_size),
    backbone=dict(
        arch=dict(
            _delete_=True,
            channels=channels,
            depths=[1, 1, 2, 1],
            groups=[1, 2, 4, 8]),
        drop_path_rate=0.1),
    decode_head=dict(
        in_channels=[channels * 2**i for i in range(4)],
        feat_channels=dims,
        out_channels=dims,
        num_classes=num_classes,
        num_queries=10,
        pixel_decoder=dict(
            norm_cfg=dict(type='GN', num_groups=8),
            encoder=dict(
                num_layers=1,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=dims, num_heads=heads),
                    ffn_cfg=dict(
                        embed_dims=dims, feedforward_channels=dims * 4))),
            positional_encoding=dict(num_feats=dims // 2)),
        positional_encoding=dict(num_feats=dims // 2),
        transformer_decoder=dict(
            num_layers=3,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=dims, num_heads=heads),
                cross_attn_cfg=dict(embed_dims=dims, num_heads=heads),
                ffn_cfg=dict(embed_dims=dims, feedforward_channels=dims * 4))),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1]),
        train_cfg=dict(num_points=1024)))

# 96x96 canvases, 64x64 crops; no flips (mirrored digits are other symbols).
# reduce_zero_label comes from the dataset (True, as for ADE20KDataset).
train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(type='NamedLoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(
        _delete_=True,
        type='DemoDigitsSeg',
        data_root='data/demo_digits_ade',
        split='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    dataset=dict(
        _delete_=True,
        type='DemoDigitsSeg',
        data_root='data/demo_digits_ade',
        split='val',
        pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-4))
max_iters = 20
warmup_iters = 5
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
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1, save_best=None))
env_cfg = dict(cudnn_benchmark=False)
