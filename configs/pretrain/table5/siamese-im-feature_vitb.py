# Table 2 (k) / Table 5, "Siamese Image Modeling (feature)" (SiameseIM):
# input = masked view 2, target = dense features of view 1 from the
# momentum encoder, mask tokens placed at view-1 patches in view-2
# coordinates, posterior = Gaussian, regulariser = stop-gradient (Table 5;
# decorrelation_weight 0 like M3I and every other Gaussian row). SiameseIM's
# own decorrelation guard is the variant
# siamese-im-feature_decorrelation_vitb.py.
# 400 epochs, the ablation schedule of Sec. 4.2 (Tables 2 and 3).
# Masked patches are dropped from the encoder (as MAE and SiameseIM).
_base_ = '../m3i_vitb_400e.py'
model = dict(
    mixer=dict(
        mode='mask',
        target_views=('different', 'different'),
        drop_masked=True),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)
