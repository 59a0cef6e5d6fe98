# The ablation schedule of the COCO fine-tune (paper Sec. 4.2, App. B.3:
# "For the ablation study, we use a short schedule of 25 epochs"; Tables 2,
# 13, 14): the 100-epoch recipe with a quarter of its iterations, as
# ViTDet's shorter schedules scale theirs (max_iter and milestones // 4):
# 184375 // 4 = 46093 iterations (25 epochs of 118k images at batch 64),
# lr x0.1 at 163889 // 4 and 177546 // 4; 250 warm-up iterations (Table 10).
# Validation and checkpoints every 5 epochs (9219 iterations) and at the end.
_base_ = ['./mask-rcnn_vitdet-b_m3i_lsj-1024-100e_coco.py']
max_iters = 46093
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=250),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[40972, 44386], gamma=0.1)
]
train_cfg = dict(max_iters=max_iters, val_interval=9219)
default_hooks = dict(checkpoint=dict(interval=9219))
