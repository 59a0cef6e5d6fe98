# Table 14 (appendix B.4), default row: the first image of a mix predicts
# its same view, the second a different view. The target-view ablations are
# pre-trained on ImageNet-1k without labels (image targets only, so no
# category head and no λ) for 200 epochs; rows (a)-(c) are its children.
_base_ = '../m3i_vitb.py'
model = dict(
    mixer=dict(target_views=('same', 'different')),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)

# Warm-up 2.5% of the schedule, the share of Table 7 (40 of 1600 epochs).
max_epochs = 200
warmup_epochs = 5
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs,
         eta_min=1e-6, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
