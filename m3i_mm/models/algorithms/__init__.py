from .m3i import M3I

__all__ = ['M3I']
