# Mask2Former with an InternImage-H backbone on ADE20k, 896x896 crops, 80k
# iterations: the official InternImage recipe
# (OpenGVLab/InternImage segmentation/configs/ade20k/
# mask2former_internimage_h_896_80k_cocostuff2ade20k_ss.py) on top of
# mmseg's own Mask2Former Swin-L ADE20k config (inherited through the
# package scope). From the official config: 1024-wide pixel decoder and
# transformer decoder with 32 heads and 4096-wide FFNs, 200 queries,
# drop path 0.5, resize to (3584, 896) with ratio 0.5-2.0, AdamW lr 1e-5,
# weight decay 0.05, linear warm-up over 1500 iterations from 1e-6 then
# poly (power 1) decay, gradient clipping 0.1, 16 GPUs x 1 image,
# evaluation every 2000 iterations. The official run starts from a
# COCO-Stuff Mask2Former (load_from); here the backbone starts from an M3I
# InternImage-H (set init_cfg or load_from). Layer-wise lr decay 0.95 over
# the 50 blocks, with the official constructor's depths (see
# InternImage.get_layer_depth) and its no-decay rules (1-D parameters and
# deformable sampling offsets); like the official constructor, the head's
# query, level and class embeddings take the stem's depth (lr x 0.95^51).
# Base: mmseg's own config, i.e. 'mmseg::mask2former/mask2former_swin-l-in22k-
# 384x384-pre_8xb2-160k_ade20k-640x640.py'. mmengine resolves the 'mmseg::'
# scope through the distribution name 'mmsegmentation', which the OneDL fork
# (distribution 'onedl-mmsegmentation', module 'mmseg') does not carry, so
# the same file is located through the installed module (mmengine evaluates
# this expression).
_base_ = [
    __import__('os.path').path.join(
        __import__('mmseg').__path__[0], '.mim', 'configs', 'mask2former',
        'mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py')
]
custom_imports = dict(imports=['m3i_mm'], allow_failed_imports=False)
# m3i_mm's Runner (see configs/_base_/default_runtime.py); mmdet's and
# mmseg's tools/train.py build it from runner_type.
runner_type = 'M3IRunner'

crop_size = (896, 896)
num_classes = 150
embed_dims = 1024
num_heads = 32
ffn_dims = 4096

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='InternImage',
        arch='h',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.5,
        with_cp=False,
        init_cfg=None),
    decode_head=dict(
        in_channels=[320, 640, 1280, 2560],
        feat_channels=embed_dims,
        out_channels=embed_dims,
        num_classes=num_classes,
        num_queries=200,
        pixel_decoder=dict(
            encoder=dict(
                layer_cfg=dict(
                    self_attn_cfg=dict(
                        embed_dims=embed_dims, num_heads=num_heads),
                    ffn_cfg=dict(
                        embed_dims=embed_dims,
                        feedforward_channels=ffn_dims))),
            positional_encoding=dict(num_feats=embed_dims // 2)),
        positional_encoding=dict(num_feats=embed_dims // 2),
        transformer_decoder=dict(
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=embed_dims, num_heads=num_heads),
                cross_attn_cfg=dict(
                    embed_dims=embed_dims, num_heads=num_heads),
                ffn_cfg=dict(
                    embed_dims=embed_dims, feedforward_channels=ffn_dims))),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(type='NamedLoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(3584, 896),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(3584, 896), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=1, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-5, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    constructor='BackboneLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        _delete_=True,
        layer_decay_rate=0.95,
        flat_decay_mult=0.0,
        custom_keys={
            '.dcn.offset.': dict(decay_mult=0.0),
            'sampling_offsets': dict(decay_mult=0.0),
        },
        stem_depth_keys=[
            'decode_head.query_embed', 'decode_head.query_feat',
            'decode_head.level_embed', 'decode_head.cls_embed',
            'decode_head.mask_embed', 'pixel_decoder.level_encoding'
        ]))

max_iters = 80000
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
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=2000)
default_hooks = dict(
    checkpoint=dict(
        type='DurableCheckpointHook',
        by_epoch=False,
        interval=2000,
        max_keep_ckpts=1,
        save_best='mIoU'),
    # Stops at a NaN/inf loss or parameter (see default_runtime.py).
    finite_check=dict(type='mmpretrain.FiniteCheckHook'))
# 16 GPUs x 1 image.
auto_scale_lr = dict(enable=False, base_batch_size=16)
