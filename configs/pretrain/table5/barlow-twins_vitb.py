# Table 5, footnote 3, "Instance Discrimination" with decorrelation instead
# of negatives (Barlow Twins-like): as instance-discrimination_vitb.py
# (input = view 2, target = the momentum encoder's global feature of
# view 1, attention-pooling decoder), but the posterior is Barlow Twins'
# loss on the batch-normalised (no affine) predictions and targets of the
# global batch: Σ(1 - C_ii)² + λ Σ_{i≠j} C_ij² with BT's λ = 5e-3
# (Zbontar et al. 2021). BT's own target branch shares the online weights
# and receives gradients; here it is the framework's momentum encoder.
_base_ = './instance-discrimination_vitb.py'
model = dict(
    image_posterior=dict(
        _delete_=True, type='BarlowTwinsPosterior', lambd=5e-3))
