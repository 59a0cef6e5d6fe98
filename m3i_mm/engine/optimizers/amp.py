"""Mixed precision that also runs on a CPU (bf16)."""
import torch
from mmengine.device import (is_cuda_available, is_mlu_available,
                             is_musa_available, is_npu_available)
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


def no_accelerator() -> bool:
    """No CUDA, NPU, MLU or MUSA device (what mmengine asserts for AMP)."""
    return not (is_cuda_available() or is_npu_available()
                or is_mlu_available() or is_musa_available())


@OPTIM_WRAPPERS.register_module()
class CPUAwareAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper``, also on a CPU for bf16.

    ``AmpOptimWrapper.__init__`` (onedl-mmengine 0.10.12, mmengine 0.10.7)
    asserts a CUDA/NPU/MLU/MUSA device, although its ``optim_context`` uses
    mmengine's ``autocast``, which runs ``torch.autocast('cpu',
    dtype=torch.bfloat16)`` on a CPU. Without an accelerator this wrapper is
    built for bf16 with a disabled loss scaler (bf16 has fp32's range) and
    refuses other dtypes with the remedy; on an accelerator it is
    ``AmpOptimWrapper``. Used by ``configs/_base_/precision/*.py``.
    """

    def __init__(self,
                 loss_scale='dynamic',
                 dtype=None,
                 use_fsdp=False,
                 **kwargs) -> None:
        if not no_accelerator():
            super().__init__(loss_scale, dtype, use_fsdp, **kwargs)
            return
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(
                f'{type(self).__name__}(dtype={dtype!r}) without a GPU: CPU '
                'autocast runs bfloat16 only; use dtype="bfloat16" '
                '(tools/train.py --precision bf16)')
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16
