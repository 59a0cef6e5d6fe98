# Table 5, "Masked Image Modeling (pixel)" (MAE-like): input = masked view 1,
# target = its normalised pixels (identity target encoder), posterior =
# Gaussian.
# 400 epochs, the ablation schedule of Sec. 4.2 (Tables 2 and 3).
# Masked patches are dropped from the encoder (as MAE and SiameseIM).
_base_ = '../m3i_vitb_400e.py'
model = dict(
    mixer=dict(
        mode='mask', target_views=('same', 'same'), drop_masked=True),
    image_target=dict(_delete_=True, type='PixelTarget', patch_size=16),
    image_decoder=dict(out_channels=16 * 16 * 3),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)
