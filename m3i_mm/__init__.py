"""m3i_mm: M3I pre-training (CVPR 2023) as an OpenMMLab plugin.

Importing the package applies the upstream compatibility fixes
(:mod:`m3i_mm.compat`) and registers every module into the registries of
mmpretrain, mmdet and mmseg.
"""
from . import compat

compat.apply()

from . import datasets, engine, evaluation, models  # noqa: E402,F401
from .version import __version__  # noqa: E402

__all__ = ['__version__']
