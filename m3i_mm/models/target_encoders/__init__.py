from .category import CategoryEmbedding
from .discrete_token import DiscreteTokenTarget
from .frozen_image import FrozenImageTarget, FrozenTarget
from .momentum_image import (MomentumImageTarget, backbone_tokens,
                             target_representation)
from .pixel import PixelTarget
from .text import TextTargetEncoder, resolve_model_path

__all__ = [
    'CategoryEmbedding', 'DiscreteTokenTarget', 'FrozenImageTarget',
    'FrozenTarget', 'MomentumImageTarget', 'PixelTarget',
    'TextTargetEncoder', 'backbone_tokens', 'resolve_model_path',
    'target_representation'
]
