# Table 2 (j) / Table 5, "Siamese Image Modeling (pixel)": input = masked
# view 2, target = the pixels of view 1, posterior = Gaussian.
# The target pixels are view 1 before its photometric augmentation (crop,
# resize and flip only): the input cannot see view 1's colour change.
_base_ = './mim-pixel_vitb.py'
model = dict(
    data_preprocessor=dict(geometric_target_view=True),
    image_target=dict(geometric_view=True),
    mixer=dict(mode='mask', target_views=('different', 'different')))
