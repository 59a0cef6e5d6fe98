"""DCNv3 core entry point: the CUDA extension where built, else PyTorch.

The extension ``m3i_mm._ext_dcnv3`` is optional (see ``build.py``). It is
imported lazily on the first CUDA call; if it is missing, CUDA inputs fall
back to :func:`dcnv3_core_pytorch` with one warning per process.

Its kernels are the custom ops ``torch.ops.m3i_mm.dcnv3_cuda`` (with a fake
kernel giving the output shape and a registered backward) and
``torch.ops.m3i_mm.dcnv3_cuda_backward``: ``torch.compile`` keeps them in
its graph as opaque calls instead of breaking the graph at the extension.
"""
import importlib
import warnings
from types import ModuleType
from typing import List, Optional, Tuple

import torch
from torch import Tensor

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


@torch.compiler.assume_constant_result
def cuda_ext_available() -> bool:
    """Whether the DCNv3 CUDA extension is built and importable (a constant
    to ``torch.compile``: it imports the extension while tracing)."""
    return _load_ext() is not None


@torch.compiler.assume_constant_result
def _ext_or_warn_once() -> bool:
    """:func:`cuda_ext_available`, warning once per process if not."""
    global _fallback_warned
    if cuda_ext_available():
        return True
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f'{EXT_NAME} is not built: DCNv3 runs its pure-PyTorch '
            'implementation on CUDA (slower, more memory). Reinstall '
            'm3i_mm on a CUDA machine to build the kernels.')
    return False


@torch.library.custom_op('m3i_mm::dcnv3_cuda', mutates_args=())
def _dcnv3_cuda(input: Tensor, offset: Tensor, mask: Tensor,
                sizes: List[int], offset_scale: float,
                remove_center: bool) -> Tensor:
    """Forward kernel of the extension.

    Args:
        input (Tensor): ``(N, H, W, group * group_channels)``, contiguous.
        offset (Tensor): ``(N, Ho, Wo, group * P * 2)``, input's dtype,
            contiguous.
        mask (Tensor): ``(N, Ho, Wo, group * P)``, input's dtype, contiguous.
        sizes (list[int]): ``kernel_h, kernel_w, stride_h, stride_w, pad_h,
            pad_w, dilation_h, dilation_w, group, group_channels``.
        offset_scale (float): Scale of the kernel grid and offsets.
        remove_center (bool): Drop the kernel centre.

    Returns:
        Tensor: ``(N, Ho, Wo, group * group_channels)``, input's dtype.
    """
    return _load_ext().forward(input, offset, mask, *sizes, offset_scale,
                               remove_center, False)


@_dcnv3_cuda.register_fake
def _(input: Tensor, offset: Tensor, mask: Tensor, sizes: List[int],
      offset_scale: float, remove_center: bool) -> Tensor:
    return input.new_empty(offset.shape[:3] + input.shape[3:])


@torch.library.custom_op('m3i_mm::dcnv3_cuda_backward', mutates_args=())
def _dcnv3_cuda_backward(input: Tensor, offset: Tensor, mask: Tensor,
                         grad_out: Tensor, sizes: List[int],
                         offset_scale: float,
                         remove_center: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward kernel of the extension: the gradients of input, offset and
    mask, in their shapes and dtype (arguments as :func:`_dcnv3_cuda`,
    ``grad_out`` contiguous)."""
    grad_input, grad_offset, grad_mask = _load_ext().backward(
        input, offset, mask, grad_out, *sizes, offset_scale, remove_center,
        False)
    return grad_input, grad_offset, grad_mask


@_dcnv3_cuda_backward.register_fake
def _(input: Tensor, offset: Tensor, mask: Tensor, grad_out: Tensor,
      sizes: List[int], offset_scale: float,
      remove_center: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(input), torch.empty_like(offset),
            torch.empty_like(mask))


def _save_for_cuda_backward(ctx, inputs: tuple, output: Tensor) -> None:
    input, offset, mask, *cfg = inputs
    ctx.save_for_backward(input, offset, mask)
    ctx.cfg = cfg


def _cuda_backward(ctx, grad_out: Tensor) -> tuple:
    grads = torch.ops.m3i_mm.dcnv3_cuda_backward(*ctx.saved_tensors,
                                                 grad_out.contiguous(),
                                                 *ctx.cfg)
    return (*grads, None, None, None)


_dcnv3_cuda.register_autograd(
    _cuda_backward, setup_context=_save_for_cuda_backward)


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
        if not cuda_ext_available():
            raise RuntimeError(
                f'DCNv3: backend="cuda" but {EXT_NAME} is not built; '
                'reinstall m3i_mm on a CUDA machine (or with M3I_FORCE_CUDA=1)'
                ' and --no-build-isolation')
        return True
    return input.is_cuda and _ext_or_warn_once()


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
    return torch.ops.m3i_mm.dcnv3_cuda(input.contiguous(),
                                       offset.to(input.dtype).contiguous(),
                                       mask.to(input.dtype).contiguous(),
                                       list(args), float(offset_scale),
                                       bool(remove_center))
