# Table 14, target views first 'same' / second 'same': M3I
# pre-training without labels (only the two image targets of the mixed
# input) on ImageNet-1k (model.mixer.target_views). Schedule: inherited from
# m3i_vitb.py (the paper ran these 200 epochs).
_base_ = '../m3i_vitb.py'
model = dict(
    mixer=dict(target_views=('same', 'same')),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)
