# Table 2 (j) / Table 5, "Siamese Image Modeling (pixel)": input = masked
# view 2, target = the pixels of view 1, posterior = Gaussian.
_base_ = './mim-pixel_vitb.py'
model = dict(mixer=dict(mode='mask', target_views=('different',
                                                   'different')))
