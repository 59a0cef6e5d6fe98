# Table 5, "Siamese Image Modeling (feature)" (SiameseIM): input = masked
# view 2, target = dense features of view 1 from the momentum encoder, mask
# tokens placed at view-1 patches in view-2 coordinates, posterior = Gaussian.
_base_ = '../m3i_vitb.py'
model = dict(
    mixer=dict(mode='mask', target_views=('different', 'different')),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)
