from .batch_augment import build_batch_augment
from .data_preprocessor import M3IDataPreprocessor
from .distributed import gather_with_grad, mean_over_ranks, per_rank_share
from .loss_weighting import GradientNormBalancer
from .masked_encoding import vit_visible_tokens
from .mixing import derangement, mix_images, upsample_patch_mask
from .multi_input import MixedBatch, MultiInputMixer
from .precision import fp32_region
from .view_geometry import (patch_centers, relative_query_embed,
                            sincos_pos_embed, target_positions_in_input,
                            target_scale_in_input)

__all__ = [
    'M3IDataPreprocessor', 'build_batch_augment', 'GradientNormBalancer',
    'MixedBatch', 'gather_with_grad', 'MultiInputMixer', 'derangement',
    'fp32_region', 'mean_over_ranks', 'per_rank_share', 'mix_images',
    'upsample_patch_mask',
    'patch_centers', 'sincos_pos_embed', 'target_positions_in_input',
    'target_scale_in_input', 'relative_query_embed', 'vit_visible_tokens'
]
