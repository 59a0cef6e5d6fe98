from .finite_check_hook import FiniteCheckHook
from .gradient_norm_sync import GradientNormSyncHook

__all__ = ['FiniteCheckHook', 'GradientNormSyncHook']
