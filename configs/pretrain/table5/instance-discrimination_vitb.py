# Table 2 (i) / Table 5, "Instance Discrimination" (MoCo v3-like): input =
# view 2 (full), target = the momentum encoder's global feature of view 1
# (mean of its tokens), global decoder = attention pooling over the input
# tokens, Boltzmann posterior whose negatives are the other images' targets
# of the whole batch, gathered over ranks; cosine energies at τ = 0.2
# (MoCo v3).
_base_ = './dense-distillation_vitb.py'
model = dict(
    mixer=dict(target_views=('different', 'different')),
    image_target=dict(output='global'),
    image_decoder=dict(
        _delete_=True,
        type='AttentionPoolingHead',
        in_channels=768,
        out_channels=768,
        num_heads=16),
    image_posterior=dict(
        _delete_=True,
        type='BoltzmannPosterior',
        normalize=True,
        temperature=0.2))
