# Table 2 (g) / Table 5, "Novel View Synthesis" (inter-view, full input):
# input = view 2, target = the pixels of view 1 at its patches mapped into
# view 2's coordinates, posterior = Gaussian.
_base_ = './mim-pixel_vitb.py'
model = dict(
    mixer=dict(mode='full', target_views=('different', 'different'),
               drop_masked=False))
