from .category import CategoryEmbedding
from .momentum_image import MomentumImageTarget, backbone_tokens
from .pixel import PixelTarget
from .text import TextTargetEncoder, resolve_model_path

__all__ = [
    'CategoryEmbedding', 'MomentumImageTarget', 'PixelTarget',
    'TextTargetEncoder', 'backbone_tokens', 'resolve_model_path'
]
