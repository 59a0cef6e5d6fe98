# Table 5, "Siamese Image Modeling (feature)" (SiameseIM): input = masked
# view 2, target = dense features of view 1 from the momentum encoder, mask
# tokens placed at view-1 patches in view-2 coordinates, posterior = Gaussian.
# 400 epochs, the ablation schedule of Sec. 4.2 (Tables 2 and 3).
# Masked patches are dropped from the encoder (as MAE and SiameseIM).
# Collapse guard as SiameseIM trains it (its dist_sim_base_1600ep.sh:
# --loss_type sim --neg_weight 0.02): UniGrad's decorrelation term, weight
# 0.02 (GaussianPosterior.decorrelation_weight).
_base_ = '../m3i_vitb_400e.py'
model = dict(
    mixer=dict(
        mode='mask',
        target_views=('different', 'different'),
        drop_masked=True),
    image_posterior=dict(decorrelation_weight=0.02),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)
