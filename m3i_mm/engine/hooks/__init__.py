from .finite_check_hook import FiniteCheckHook

__all__ = ['FiniteCheckHook']
