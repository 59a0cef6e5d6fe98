from .internimage import InternImage
from .vitdet import ViTDet

__all__ = ['InternImage', 'ViTDet']
