# Table 5, "Masked Image Modeling (feature)" (data2vec-like): input = masked
# view 1, target = dense features of view 1 from the momentum encoder,
# posterior = Gaussian. Self-supervised only.
# 400 epochs, the ablation schedule of Sec. 4.2 (Tables 2 and 3).
# Masked patches are dropped from the encoder (as MAE and SiameseIM).
_base_ = '../m3i_vitb_400e.py'
model = dict(
    mixer=dict(
        mode='mask', target_views=('same', 'same'), drop_masked=True),
    category_head=None,
    category_embedding=None,
    loss_balancer=None)
