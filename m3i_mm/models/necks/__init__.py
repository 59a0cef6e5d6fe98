from .image_target_decoder import ImageTargetDecoder

__all__ = ['ImageTargetDecoder']
