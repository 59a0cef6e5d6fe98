# "M3I w/o mix" (paper Table 3): one masked input per image (no second image)
# predicting another view's dense features (inter-view SSP) and its category.
_base_ = './m3i_vitb.py'
model = dict(
    mixer=dict(mode='mask', target_views=('different', 'different')))
