from .category import CategoryEmbedding
from .momentum_image import MomentumImageTarget, backbone_tokens
from .pixel import PixelTarget

__all__ = [
    'CategoryEmbedding', 'MomentumImageTarget', 'PixelTarget',
    'backbone_tokens'
]
