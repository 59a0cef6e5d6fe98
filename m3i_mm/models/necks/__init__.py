from .image_target_decoder import ImageTargetDecoder
from .simple_fpn import SimpleFPN

__all__ = ['ImageTargetDecoder', 'SimpleFPN']
