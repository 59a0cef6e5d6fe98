# Table 2 (g) / Table 5, "Novel View Synthesis" (inter-view, full input):
# input = view 2, target = the pixels of view 1 at its patches mapped into
# view 2's coordinates, posterior = Gaussian.
# The target pixels are view 1 before its photometric augmentation (crop,
# resize and flip only): the input cannot see view 1's colour change.
_base_ = './mim-pixel_vitb.py'
model = dict(
    data_preprocessor=dict(geometric_target_view=True),
    image_target=dict(geometric_view=True),
    mixer=dict(mode='full', target_views=('different', 'different'),
               drop_masked=False))
