# Table 2 (a) / Table 5, "Auto-Encoder" (intra-view, full input): input =
# view 1, target = its normalised pixels (identity target encoder) at every
# patch, posterior = Gaussian.
_base_ = './mim-pixel_vitb.py'
model = dict(
    mixer=dict(mode='full', target_views=('same', 'same'), drop_masked=False))
