from .internimage import InternImage
from .vitdet import ViTDet, ViTDetLayerDecayOptimWrapperConstructor

__all__ = ['InternImage', 'ViTDet', 'ViTDetLayerDecayOptimWrapperConstructor']
