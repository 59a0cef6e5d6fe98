# Table 5, "Masked Image Modeling (feature)" (data2vec-like): input = masked
# view 1, target = dense features of view 1 from the momentum encoder,
# posterior = Gaussian. Self-supervised only.
_base_ = '../m3i_vitb.py'
model = dict(
    mixer=dict(mode='mask', target_views=('same', 'same')),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)
