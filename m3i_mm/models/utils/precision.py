"""Regions that stay in fp32 under mixed precision (autocast)."""
import contextlib
from typing import ContextManager

import torch


def fp32_region(device: torch.device) -> ContextManager:
    """Disable autocast for ``device``'s type (a no-op where there is none).

    Under ``torch.autocast`` (mmengine's ``AmpOptimWrapper``) matmuls run in
    fp16/bf16; code inside this context runs in the dtype of its inputs, so
    callers cast to float first, e.g. the posteriors' logits and
    normalisations.

    Args:
        device (torch.device): Device of the tensors computed inside.

    Returns:
        A context manager.
    """
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
