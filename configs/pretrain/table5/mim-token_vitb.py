# Table 5, "Masked Image Modeling (feature)" with a discrete tokenizer as
# the target encoder (footnote 2: BEiT's dVAE, BEiT v2's VQ-KD): input =
# masked view 1, target = the codebook id of each patch of the full view 1
# from a frozen BEiT v2 tokenizer (mmpretrain's VQKD, 8,192 entries),
# decoder = K logits per patch, posterior = Boltzmann over the codebook
# (BEiT's cross-entropy at the masked patches).
# Needs the tokenizer weights: mmpretrain's BEiT v2 target generator,
# https://download.openmmlab.com/mmselfsup/1.x/target_generator_ckpt/vqkd_encoder.pth
# saved as `checkpoint` below (a bare VQKD state dict, prefix '').
# The tokenizer sees the student's normalised view (BEiT v2 also feeds it
# the ImageNet-normalised image); BEiT's dVAE would take its own input:
# image_target.mean/std/source_mean/source_std (see FrozenImageTarget).
_base_ = './mim-feature_vitb.py'
num_tokens = 8192
model = dict(
    image_target=dict(
        _delete_=True,
        type='DiscreteTokenTarget',
        checkpoint='checkpoints/vqkd_encoder.pth',
        prefix='',
        tokenizer=dict(
            type='VQKD',
            num_embed=num_tokens,
            embed_dims=32,
            # The codebook comes from the checkpoint, never from k-means.
            quantize_kmeans_init=False,
            encoder_config=dict(
                arch='base',
                img_size=224,
                patch_size=16,
                out_indices=-1,
                drop_path_rate=0.0,
                final_norm=True,
                out_type='featmap',
                with_cls_token=True,
                use_abs_pos_emb=True,
                use_rel_pos_bias=False,
                use_shared_rel_pos_bias=False,
                layer_scale_init_value=0.0))),
    image_decoder=dict(out_channels=num_tokens),
    image_posterior=dict(
        _delete_=True, type='CodebookBoltzmannPosterior'))
