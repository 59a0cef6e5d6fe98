# Table 2 (c) / Table 5, "Global Distillation" (intra-view, full input):
# input = view 1, target = the momentum encoder's global feature (mean of
# its tokens) of the same view 1, predicted by attention pooling.
# Regulariser = stop-gradient, no negatives (BYOL-like): Gaussian posterior
# on the layer-normalised target, as instance-discrimination-byol_vitb.py.
# Table 5 lists this row with regularisation "stop gradient" and
# distribution form "Boltzmann"; a Boltzmann posterior needs candidates
# (negatives) that stop-gradient alone does not give, so we follow the
# stop-gradient column with a Gaussian, as Table 5 does for Masked Image
# Modeling (global).
_base_ = './instance-discrimination-byol_vitb.py'
model = dict(mixer=dict(target_views=('same', 'same')))
