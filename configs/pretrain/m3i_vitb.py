# M3I pre-training of ViT-B/16 on ImageNet-1k (paper Table 7, ViT-B column):
# image-category + self-supervised targets, 1600 epochs, batch 4096.
_base_ = [
    '../_base_/models/m3i_vit-base-p16.py',
    '../_base_/datasets/imagenet_m3i.py',
    '../_base_/default_runtime.py',
    '../_base_/precision/fp16.py',  # the paper's; see README "Precision"
]

# Photometric augmentation of the views batched on the GPU (Table 7).
model = dict(
    data_preprocessor=dict(
        type='M3IDataPreprocessor',
        view_transforms={{_base_.view_transforms}}))

# AdamW, betas (0.9, 0.95) (Table 7). The peak lr's exponent and the weight
# decay are illegible in the paper's source text: 1e-3 at batch 4096 and
# 0.05 are our choices (see README, "Uncertain hyper-parameters").
# Gradient clipping (max norm 1.0) is not in the paper: SiameseIM's
# pre-training [67] value (--clip_grad 1.0 in OpenGVLab/Siamese-Image-Modeling,
# configs/pretrain/dist_sim_base_1600ep.sh).
optim_wrapper = dict(
    optimizer=dict(
        type='AdamW', lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
            'mask_token': dict(decay_mult=0.0),
            'category_head.query': dict(decay_mult=0.0),
            # Text targets (YFCC, 1B configs): the learned temperature and
            # the attention-pooling query, like CLIP's logit scale and
            # embeddings, are not decayed.
            'text_head.query': dict(decay_mult=0.0),
            'text_logit_scale': dict(decay_mult=0.0),
        }),
    clip_grad=dict(max_norm=1.0))

max_epochs = 1600
warmup_epochs = 40
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-4,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs - warmup_epochs,
        eta_min=1e-6,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True),
]
# Continues an iteration checkpoint in the middle of its epoch (m3i_mm).
train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    # An epoch checkpoint every 10 epochs (~3,100 iterations at batch 4096)
    # and, between them, a rolling iteration checkpoint every 500
    # iterations: a kill loses minutes, not epochs.
    checkpoint=dict(
        type='DurableCheckpointHook', interval=10, max_keep_ckpts=3,
        last_interval=500),
    # Held-out top-1 while training (category head, zero-shot, k-NN) on
    # 10,000 ImageNet val images (monitor_dataloader of the dataset base).
    monitor=dict(type='M3IMonitorHook', interval=2000, num_samples=10_000))
# Table 7: batch 4096 = 8 GPUs x 512; other totals scale the lr linearly
# with --auto-scale-lr.
auto_scale_lr = dict(base_batch_size=4096)
randomness = dict(seed=0, diff_rank_seed=True)
find_unused_parameters = False
