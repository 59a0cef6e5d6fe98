# Table 5, footnote 3, "Instance Discrimination" with stop-gradient instead
# of negatives (BYOL-like): as instance-discrimination_vitb.py, but the
# attention-pooling predictor regresses the (layer-normalised) momentum
# target: Gaussian posterior.
_base_ = './instance-discrimination_vitb.py'
model = dict(
    image_posterior=dict(
        _delete_=True, type='GaussianPosterior', normalize_target=True))
