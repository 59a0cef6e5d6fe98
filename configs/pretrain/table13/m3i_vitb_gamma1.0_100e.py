# Table 13 (appendix B.4): the gradient ratio γ of the dynamic loss weight
# λ = γ ḡ_uni / ḡ_multi, swept over {0.2, 0.5, 1.0, 2.0, 5.0}; each run
# pre-trains ViT-B/16 on ImageNet-1k for 100 epochs. This is γ = 1 (the
# default); the other points of the sweep are its children.
_base_ = '../m3i_vitb.py'
model = dict(loss_balancer=dict(gamma=1.0))

# Warm-up 2.5% of the schedule, the share of Table 7 (40 of 1600 epochs).
max_epochs = 100
warmup_epochs = 2.5
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs,
         eta_min=1e-6, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
