# Table 5, "Masked Image Modeling (feature)" with data2vec's target (its
# typical work, footnote 2): input = masked view 1, target = the momentum
# encoder's dense features of the full view 1 taken as the mean of its top
# K = 6 blocks' outputs, each instance-normalised over the tokens (data2vec,
# Baevski et al. 2022, Sec. 3.3; ViT-B: K = 6). Posterior: the project's
# Gaussian (L2 on the layer-normalised target) where data2vec uses a
# smooth L1 (β = 2 for images): the framework's Gaussian row.
_base_ = './mim-feature_vitb.py'
model = dict(
    image_target=dict(average_top_k=6, target_layer_norm='instance'))
