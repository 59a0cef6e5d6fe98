# Table 2 (f) / Table 5, "Masked Image Modeling (global)": input = masked
# view 1, target = the momentum encoder's global feature of the full view 1,
# predicted by attention pooling over the visible tokens; Gaussian posterior
# (stop-gradient, Table 5).
_base_ = './mim-feature_vitb.py'
model = dict(
    image_target=dict(output='global'),
    image_decoder=dict(
        _delete_=True,
        type='AttentionPoolingHead',
        in_channels=768,
        out_channels=768,
        num_heads=16))
