# M3I with ViT-B/16 (paper Table 7, ViT-B/16 column).
model = dict(
    type='M3I',
    data_preprocessor=dict(
        type='M3IDataPreprocessor',  # SelfSup's, plus M3I's sample fields
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True),
    backbone=dict(
        type='VisionTransformer',
        arch='b',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1,  # Table 7: stochastic depth 0.1 (linear)
        out_type='featmap',
        final_norm=True),
    # Inputs: two images mixed with a 50% blockwise mask; the first predicts
    # its same view, the second a different view (Table 14 default).
    mixer=dict(
        type='MultiInputMixer',
        patch_size=16,
        mode='mix',
        target_views=('same', 'different')),
    # Image target encoder: momentum backbone, EMA 0.995 -> 1 (cosine).
    image_target=dict(
        type='MomentumImageTarget', momentum=0.005, end_momentum=0.0),
    # Image decoder: 4 layers, hidden 768, FFN 3072, 16 heads.
    image_decoder=dict(
        type='ImageTargetDecoder',
        in_channels=768,
        out_channels=768,
        embed_dims=768,
        depth=4,
        num_heads=16,
        mlp_ratio=4.0),
    image_posterior=dict(type='GaussianPosterior', normalize_target=True),
    # Category target: attention pooling (768 -> 768, 16 heads) predicting
    # the category embedding = linear classifier weight, softmax CE, LS 0.1.
    category_head=dict(
        type='AttentionPoolingHead',
        in_channels=768,
        out_channels=768,
        num_heads=16),
    category_embedding=dict(
        type='CategoryEmbedding', num_classes=1000, embed_dims=768),
    category_posterior=dict(type='BoltzmannPosterior', label_smoothing=0.1),
    # L = L_SSP + λ L_SP, λ = γ ḡ_uni / ḡ_multi (appendix B.1), γ = 1.
    loss_balancer=dict(type='GradientNormBalancer', gamma=1.0),
)
