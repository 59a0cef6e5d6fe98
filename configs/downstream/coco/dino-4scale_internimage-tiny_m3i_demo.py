# The recipe of dino-4scale_internimage-l_m3i_1x_coco.py (InternImage stages
# 2-4 into a ChannelMapper, 4-scale DINO with contrastive denoising,
# two-stage queries and box refinement, AdamW with the backbone at 0.1x,
# gradient clipping, warm-up + step decay, COCO box mAP) on the embedded
# demo canvases (m3i_mm.datasets.demo.detection, COCO layout, 10 digit
# classes), on CPU, in a few iterations: a tiny InternImage (16 channels,
# depths 1/1/2/1) on 96x96 images, a 32-wide transformer with one encoder
# and two decoder layers, 30 queries and 10 denoising queries.
_base_ = ['./dino-4scale_internimage-l_m3i_1x_coco.py']
image_size = (96, 96)
channels = 16
dims = 32
heads = 4

model = dict(
    num_queries=30,
    data_preprocessor=dict(
        mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=False),
    backbone=dict(
        arch=dict(
            _delete_=True,
            channels=channels,
            depths=[1, 1, 2, 1],
            groups=[1, 2, 4, 8]),
        drop_path_rate=0.1),
    neck=dict(
        in_channels=[channels * 2, channels * 4, channels * 8],
        out_channels=dims,
        norm_cfg=dict(type='GN', num_groups=8)),
    encoder=dict(
        num_layers=1,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=dims, num_heads=heads),
            ffn_cfg=dict(embed_dims=dims, feedforward_channels=dims * 4))),
    decoder=dict(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=dims, num_heads=heads),
            cross_attn_cfg=dict(embed_dims=dims, num_heads=heads),
            ffn_cfg=dict(embed_dims=dims, feedforward_channels=dims * 4))),
    positional_encoding=dict(num_feats=dims // 2),
    bbox_head=dict(num_classes=10, embed_dims=dims),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=10)),
    test_cfg=dict(max_per_img=30))

# Digits on 96x96 canvases: resize to 96, pad to 96; no flips (mirrored
# digits are other symbols).
train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(type='NamedLoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.75, 1.25),
         keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=image_size,
        allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
data_root = 'data/demo_digits_coco'
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(
        _delete_=True,
        type='DemoDigitsCoco',
        data_root=data_root,
        split='train',
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    dataset=dict(
        _delete_=True,
        type='DemoDigitsCoco',
        data_root=data_root,
        split='val',
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    metric='bbox',
    ann_file=data_root + '/annotations/instances_val.json')
test_evaluator = val_evaluator

max_iters = 20
warmup_iters = 5
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
        milestones=[16],
        gamma=0.1)
]
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(
        by_epoch=False, interval=max_iters, max_keep_ckpts=1,
        save_best=None))
log_processor = dict(by_epoch=False)
