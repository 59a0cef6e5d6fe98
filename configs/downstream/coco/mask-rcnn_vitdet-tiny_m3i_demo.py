# The COCO recipe of mask-rcnn_vitdet-b_m3i_lsj-1024-100e_coco.py (ViTDet
# backbone with windowed + global attention and relative position tables,
# SimpleFPN, Mask R-CNN with LayerNorm heads, large-scale jitter, AdamW with
# layer-wise lr decay, warm-up + step schedule, COCO box and mask mAP) on the
# embedded demo canvases (m3i_mm.datasets.demo.detection, COCO layout,
# 10 digit classes), on CPU, in a few iterations.
#
# Backbone: the tiny ViT of configs/pretrain/m3i_vit-tiny_demo.py (64 dims,
# 4 blocks, 4 heads, 4x4 patches), so its output stride is 4 and the
# pyramid has strides 1-16; 96x96 inputs give a 24x24 grid, windows of 8x8
# tokens (3x3 windows), global attention in blocks 1 and 3. Start from the
# demo M3I model with
#   python tools/model_converters/m3i_to_downstream.py \
#       work_dirs/m3i_vit-tiny_demo/iter_800.pth \
#       work_dirs/m3i_vitdet-tiny_96.pth \
#       --layout vitdet --img-size 96 --rel-pos-heads 4 --window-size 8 \
#       --global-attn-indexes 1 3
#   python tools/train.py THIS_CONFIG \
#       --cfg-options load_from=work_dirs/m3i_vitdet-tiny_96.pth
# (mmdet's own tools/train.py works the same way).
_base_ = ['./mask-rcnn_vitdet-b_m3i_lsj-1024-100e_coco.py']
image_size = (96, 96)
dims = 64
channels = 32
strides = [1, 2, 4, 8]

model = dict(
    data_preprocessor=dict(
        mean=[127.5] * 3,
        std=[127.5] * 3,
        bgr_to_rgb=False,
        batch_augments=[
            dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)
        ]),
    backbone=dict(
        arch=dict(
            _delete_=True,
            embed_dims=dims,
            num_layers=4,
            num_heads=4,
            feedforward_channels=dims * 4),
        img_size=image_size,
        patch_size=4,
        window_size=8,
        global_attn_indexes=[1, 3],
        init_cfg=None),
    neck=dict(
        backbone_channel=dims,
        in_channels=[dims // 4, dims // 2, dims, dims],
        out_channels=channels),
    rpn_head=dict(
        in_channels=channels,
        feat_channels=channels,
        anchor_generator=dict(strides=strides + [16])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            out_channels=channels, featmap_strides=strides),
        bbox_head=dict(
            in_channels=channels,
            conv_out_channels=channels,
            fc_out_channels=64,
            num_classes=10),
        mask_roi_extractor=dict(
            out_channels=channels, featmap_strides=strides),
        mask_head=dict(
            in_channels=channels, conv_out_channels=channels,
            num_classes=10)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))

# Large-scale jitter at 96 (resize 0.5-2.0, crop 96); no flips (mirrored
# digits are other symbols).
train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(type='NamedLoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='RandomResize',
        scale=image_size,
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(0, 0, 0))),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
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
    dataset=dict(
        _delete_=True,
        type='DemoDigitsCoco',
        data_root=data_root,
        split='val',
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + '/annotations/instances_val.json')
test_evaluator = val_evaluator

optim_wrapper = dict(type='OptimWrapper')  # no AMP on CPU
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
        milestones=[16, 18],
        gamma=0.1)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
