# Table 5, "Dense Distillation" (intra-view, full input): input = view 1,
# target = dense features of view 1 from the momentum encoder, posterior =
# Gaussian.
# 400 epochs, the ablation schedule of Sec. 4.2 (Tables 2 and 3).
_base_ = '../m3i_vitb_400e.py'
model = dict(
    mixer=dict(mode='full', target_views=('same', 'same')),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)
