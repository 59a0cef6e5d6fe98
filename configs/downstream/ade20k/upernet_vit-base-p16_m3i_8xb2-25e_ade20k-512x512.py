# The ablation schedule of the ADE20k fine-tune (paper Sec. 4.2: "For other
# datasets, fine-tuning with 25 epochs is adopted"). mmseg trains by
# iterations: 25 epochs of ADE20k's 20,210 training images at the base
# config's batch 16 (8 GPUs x 2) = 25 x 20210 / 16 = 31578.1, rounded up to
# 31579 iterations. 1500 warm-up iterations then linear decay to the end, as
# Table 12. Validation and checkpoints every 5 epochs (6316 iterations) and
# at the end.
_base_ = ['./upernet_vit-base-p16_m3i_8xb2-160k_ade20k-512x512.py']
max_iters = 31579
warmup_iters = 1500
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=warmup_iters),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False,
         begin=warmup_iters, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=6316)
default_hooks = dict(checkpoint=dict(interval=6316))
