"""M3I data transforms, registered in mmpretrain's TRANSFORMS."""
from .m3i_views import M3IViews
from .masking import BlockwiseMaskGenerator

__all__ = ['BlockwiseMaskGenerator', 'M3IViews']
