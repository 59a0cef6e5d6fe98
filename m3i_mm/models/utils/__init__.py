from .distributed import gather_with_grad
from .loss_weighting import GradientNormBalancer
from .masked_encoding import vit_visible_tokens
from .mixing import derangement, mix_images, upsample_patch_mask
from .multi_input import MixedBatch, MultiInputMixer
from .view_geometry import (patch_centers, relative_query_embed,
                            sincos_pos_embed, target_positions_in_input,
                            target_scale_in_input)

__all__ = [
    'GradientNormBalancer', 'MixedBatch', 'gather_with_grad', 'MultiInputMixer', 'derangement',
    'mix_images', 'upsample_patch_mask', 'patch_centers', 'sincos_pos_embed',
    'target_positions_in_input', 'target_scale_in_input',
    'relative_query_embed', 'vit_visible_tokens'
]
