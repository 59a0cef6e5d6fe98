from .checkpointed_vit import CheckpointedVisionTransformer
from .internimage import InternImage
from .vitdet import ViTDet

__all__ = ['CheckpointedVisionTransformer', 'InternImage', 'ViTDet']
