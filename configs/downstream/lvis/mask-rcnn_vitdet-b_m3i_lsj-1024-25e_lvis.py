# The ablation schedule of the LVIS fine-tune (paper Sec. 4.2, App. B.3: 25
# epochs): the 100-epoch recipe with a quarter of its iterations, as ViTDet
# scales its shorter schedules: 156250 // 4 = 39062 iterations (25 epochs of
# 100k images at batch 64), lr x0.1 at 138889 // 4 and 150463 // 4; 250
# warm-up iterations (Table 11). Validation and checkpoints every 5 epochs
# (7813 iterations) and at the end.
_base_ = ['./mask-rcnn_vitdet-b_m3i_lsj-1024-100e_lvis.py']
max_iters = 39062
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=250),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[34722, 37615], gamma=0.1)
]
train_cfg = dict(max_iters=max_iters, val_interval=7813)
default_hooks = dict(checkpoint=dict(interval=7813))
