from .gradient_norm_sync import GradientNormSyncHook

__all__ = ['GradientNormSyncHook']
