# "M3I w/o mix" (paper Table 3): one masked input per image (no second image)
# predicting another view's dense features (inter-view SSP) and its category.
# 400 epochs (Table 3's schedule). As in SiameseIM, the masked patches are
# dropped from the encoder instead of being encoded as zeros.
_base_ = './m3i_vitb_400e.py'
model = dict(
    mixer=dict(
        mode='mask', target_views=('different', 'different'),
        drop_masked=True))
