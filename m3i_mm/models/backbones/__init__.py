from .internimage import InternImage

__all__ = ['InternImage']
