# M3I pre-training of ViT-B/16 with the ablation schedule of the paper
# (Sec. 4.2, "Ablation Settings"): 400 epochs on ImageNet-1k. This is
# Table 3's "M3I Pre-training" row and Table 15's ViT-B/16 row; the Table 3
# and Table 2 baselines (m3i_vitb_wo-mix.py, table5/) and ViT-L (Table 15)
# start from it.
_base_ = './m3i_vitb.py'

# Warm-up: Table 7 gives 40 of 1600 epochs (ImageNet) and 3.5 of 138
# (YFCC), 2.5% of the schedule either way; the ablations keep that share.
max_epochs = 400
warmup_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs,
         eta_min=1e-6, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
