# The ADE20k recipe of upernet_vit-base-p16_m3i_8xb2-160k_ade20k-512x512.py
# (BEiTViT with relative position tables, Feature2Pyramid + UperNet, mmseg's
# layer-wise lr decay, warm-up + linear decay, sliding-window test) on the
# embedded demo canvases (m3i_mm.datasets.demo.segmentation, ADE20k layout,
# 10 digit classes), on CPU, in a few iterations: the tiny ViT of
# configs/pretrain/m3i_vit-tiny_demo.py on 64x64 crops. Start from the demo
# M3I model with
#   python tools/model_converters/m3i_to_downstream.py \
#       work_dirs/m3i_vit-tiny_demo/iter_800.pth work_dirs/m3i_tiny_64.pth \
#       --img-size 64 --rel-pos-heads 4
#   python tools/train.py THIS_CONFIG \
#       --cfg-options load_from=work_dirs/m3i_tiny_64.pth
# (mmseg's own tools/train.py works the same way).
_base_ = ['./upernet_vit-base-p16_m3i_8xb2-160k_ade20k-512x512.py']
crop_size = (64, 64)
dims = 64
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(
        mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=False, size=crop_size),
    backbone=dict(
        arch=dict(
            _delete_=True,
            embed_dims=dims,
            num_layers=4,
            num_heads=4,
            feedforward_channels=dims * 4),
        img_size=crop_size,
        patch_size=4,
        out_indices=[0, 1, 2, 3],
        init_cfg=None),
    neck=dict(embed_dim=dims, norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[dims] * 4, channels=32, num_classes=10,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=dims, channels=16, num_classes=10, norm_cfg=norm_cfg),
    test_cfg=dict(crop_size=crop_size, stride=(32, 32)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=4))

# 96x96 canvases, 64x64 crops; no flips (mirrored digits are other symbols).
# reduce_zero_label comes from the dataset (True, as for ADE20KDataset).
train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(type='NamedLoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
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
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
