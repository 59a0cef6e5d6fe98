# Variant of Table 2 (k), "Siamese Image Modeling (feature)", with the
# collapse guard SiameseIM trains with (its dist_sim_base_1600ep.sh:
# --loss_type sim --neg_weight 0.02): UniGrad's decorrelation term, weight
# 0.02 (GaussianPosterior.decorrelation_weight). Not the paper's Table 2 row
# (stop-gradient only, siamese-im-feature_vitb.py).
_base_ = './siamese-im-feature_vitb.py'
model = dict(image_posterior=dict(decorrelation_weight=0.02))
