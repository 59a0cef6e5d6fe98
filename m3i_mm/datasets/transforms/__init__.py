"""M3I data transforms, registered in mmpretrain's TRANSFORMS (loaders also
in mmdet's and mmseg's)."""
from .loading import (ImageTooLargeError, NamedLoadDetAnnotations,
                      NamedLoadImageFromFile, NamedLoadSegAnnotations)
from .m3i_views import M3IViews
from .masking import BlockwiseMaskGenerator

__all__ = [
    'BlockwiseMaskGenerator', 'ImageTooLargeError', 'M3IViews',
    'NamedLoadDetAnnotations', 'NamedLoadImageFromFile',
    'NamedLoadSegAnnotations'
]
