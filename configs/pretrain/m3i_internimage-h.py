# M3I pre-training of InternImage-H (paper Table 7, InternImage-H column):
# 192x192 input, decoder width 1024 / FFN 4096, attention pooling 1024 ->
# 768, 30 epochs, batch 40000, stochastic depth 0.2. The paper's run also
# draws 427M image-text pairs (LAION-400M, YFCC-15M, CC12M) next to
# ImageNet-22k; text targets come with the multi-modal configs. This config
# is the image-category + self-supervised part on ImageNet-22k.
_base_ = ['./m3i_vitb.py']
img_size = 192
# Tokens: InternImage-H's own H/G head map, stages 3 and 4 fused to 1,024
# channels at stride 16 (backbone out index 5; Table 7's attention-pooling
# input is 1,024): 12x12 tokens at 192 px, 16-pixel mask patches.
stride = 16
channels = 1024

model = dict(
    backbone=dict(
        _delete_=True,
        type='InternImage',
        arch='h',
        drop_path_rate=0.2,
        drop_path_type='uniform',  # Table 7: 0.2 (uniform)
        out_indices=(5, ),
        with_cp=True),
    mixer=dict(patch_size=stride),
    image_decoder=dict(
        in_channels=channels,
        out_channels=channels,
        embed_dims=1024,
        depth=4,
        num_heads=16,
        mlp_ratio=4.0),
    category_head=dict(
        in_channels=channels, embed_dims=1024, out_channels=768,
        num_heads=16),
    category_embedding=dict(num_classes=21841, embed_dims=768))

# M3IViews decodes the file; the photometric augmentation of the views runs
# batched on the GPU (model.data_preprocessor.view_transforms of m3i_vitb.py).
train_pipeline = [
    dict(
        type='M3IViews',
        size=img_size,
        crop_scale={{_base_.crop_scale}},  # SiameseIM's, imagenet_m3i.py
        flip_prob=0.5,
        interpolation='bicubic'),
    dict(
        type='BlockwiseMaskGenerator',
        input_size=img_size,
        patch_size=stride,
        mask_ratio=0.5),
    dict(type='PackInputs', algorithm_keys=['view_boxes', 'view_flips']),
]
# Table 7: total batch 40000 (e.g. 64 GPUs x 625).
total_batch = 40000
train_dataloader = dict(
    batch_size=625,
    dataset=dict(
        type='ImageNet21k',
        data_root='data/imagenet21k',
        split='train',
        pipeline=train_pipeline))

max_epochs = 30
warmup_epochs = 1
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs,
         eta_min=1e-6, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
# Continues an iteration checkpoint in the middle of its epoch (m3i_mm).
train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs)
# Epoch checkpoints, and a rolling iteration checkpoint every 500 iterations.
default_hooks = dict(
    checkpoint=dict(interval=1, max_keep_ckpts=3, last_interval=500),
    # Monitors on ImageNet-1k val: k-NN (and zero-shot); the 21,841-way
    # category head does not predict ImageNet-1k's label indices.
    monitor=dict(category=False))
# Peak lr 1e-3 at batch 40000: Table 7's peak-lr cell spans both columns
# (ViT-B and InternImage-H) like its other shared cells, and neither the
# paper nor its appendix gives another value. --auto-scale-lr scales
# linearly from there for other totals.
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(base_batch_size=total_batch)
