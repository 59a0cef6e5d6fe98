"""DCNv3 core entry point: the CUDA extension where built, else PyTorch.

The extension ``m3i_mm._ext_dcnv3`` is optional (see ``build.py``). It is
imported lazily on the first CUDA call; if it is missing, CUDA inputs fall
back to :func:`dcnv3_core_pytorch` with one warning per process.
"""
import importlib
import warnings
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .build import EXT_NAME
from .functional import check_dcnv3_inputs, dcnv3_core_pytorch

__all__ = ['dcnv3_core', 'cuda_ext_available']

BACKENDS = ('auto', 'pytorch', 'cuda')
_ext: Optional[ModuleType] = None
_ext_loaded = False
_fallback_warned = False


def _load_ext() -> Optional[ModuleType]:
    """Import the CUDA extension once; None if it is not built."""
    global _ext, _ext_loaded
    if not _ext_loaded:
        _ext_loaded = True
        try:
            _ext = importlib.import_module(EXT_NAME)
        except ImportError:
            _ext = None
    return _ext


def cuda_ext_available() -> bool:
    """Whether the DCNv3 CUDA extension is built and importable."""
    return _load_ext() is not None


class _DCNv3CUDA(torch.autograd.Function):
    """Autograd function of the CUDA kernels (inputs of one dtype)."""

    @staticmethod
    def forward(ctx, input: Tensor, offset: Tensor, mask: Tensor,
                cfg: tuple) -> Tensor:
        ctx.save_for_backward(input, offset, mask)
        ctx.cfg = cfg
        return _load_ext().forward(input, offset, mask, *cfg)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        input, offset, mask = ctx.saved_tensors
        grad_input, grad_offset, grad_mask = _load_ext().backward(
            input, offset, mask, grad_out.contiguous(), *ctx.cfg)
        return grad_input, grad_offset, grad_mask, None


def _use_cuda_ext(input: Tensor, backend: str) -> bool:
    """Pick the kernels for ``input`` (see :func:`dcnv3_core`)."""
    global _fallback_warned
    if backend not in BACKENDS:
        raise ValueError(f'DCNv3: backend must be one of {BACKENDS}, got '
                         f'{backend!r}')
    if backend == 'pytorch':
        return False
    if backend == 'cuda':
        if not input.is_cuda:
            raise ValueError('DCNv3: backend="cuda" needs CUDA tensors, got '
                             f'input on {input.device}')
        if _load_ext() is None:
            raise RuntimeError(
                f'DCNv3: backend="cuda" but {EXT_NAME} is not built; '
                'reinstall m3i_mm on a CUDA machine (or with M3I_FORCE_CUDA=1)'
                ' and --no-build-isolation')
        return True
    if not input.is_cuda:
        return False
    if _load_ext() is None:
        if not _fallback_warned:
            _fallback_warned = True
            warnings.warn(
                f'{EXT_NAME} is not built: DCNv3 runs its pure-PyTorch '
                'implementation on CUDA (slower, more memory). Reinstall '
                'm3i_mm on a CUDA machine to build the kernels.')
        return False
    return True


def dcnv3_core(input: Tensor,
               offset: Tensor,
               mask: Tensor,
               kernel_h: int,
               kernel_w: int,
               stride_h: int,
               stride_w: int,
               pad_h: int,
               pad_w: int,
               dilation_h: int,
               dilation_w: int,
               group: int,
               group_channels: int,
               offset_scale: float,
               remove_center: bool = False,
               backend: str = 'auto') -> Tensor:
    """DCNv3 core: CUDA kernels for CUDA inputs when built, else PyTorch.

    Arguments and result as :func:`dcnv3_core_pytorch`. The CUDA kernels take
    one dtype: offset and mask are cast to the input's.

    Args:
        backend (str): ``'auto'`` (the extension for CUDA inputs if built,
            else PyTorch, warning once), ``'pytorch'`` or ``'cuda'`` (error
            if unavailable). Defaults to ``'auto'``.

    Returns:
        Tensor: ``(N, Ho, Wo, group * group_channels)``.
    """
    args = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
            dilation_w, group, group_channels)
    if not _use_cuda_ext(input, backend):
        return dcnv3_core_pytorch(input, offset, mask, *args, offset_scale,
                                  remove_center)
    check_dcnv3_inputs(input, offset, mask, *args, remove_center)
    cfg = args + (float(offset_scale), bool(remove_center))
    return _DCNv3CUDA.apply(input.contiguous(),
                            offset.to(input.dtype).contiguous(),
                            mask.to(input.dtype).contiguous(), cfg)
