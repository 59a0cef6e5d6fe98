# Table 2 (l) / Table 5, "Siamese Image Modeling (global)" / "Instance
# Discrimination (mask)" (MSN-like): input = masked view 2, target = the
# momentum encoder's global feature of view 1, Boltzmann posterior over the
# batch's targets gathered over ranks. Masked patches are dropped from the
# encoder (as MSN).
_base_ = './instance-discrimination_vitb.py'
model = dict(mixer=dict(mode='mask', drop_masked=True))
