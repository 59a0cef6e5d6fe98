"""Gathering target representations across ranks for Boltzmann posteriors."""
from typing import Tuple

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather


def gather_with_grad(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate ``x`` from all ranks, differentiably.

    Uses torch's autograd-aware ``all_gather``: the backward pass sums the
    gradients every rank computed for a slice and hands them to the rank that
    owns it, so the local slice receives exactly the gradient of the global
    loss (negatives on other ranks included). Without an initialised process
    group it returns ``x`` itself.

    Args:
        x (Tensor): (N, ...) the local batch; all ranks must use the same N.

    Returns:
        tuple[Tensor, int]: The (world_size * N, ...) concatenation and the
        offset of the local slice in it.
    """
    if not (dist.is_available() and dist.is_initialized()) or \
            dist.get_world_size() == 1:
        return x, 0
    return torch.cat(all_gather(x.contiguous()), dim=0), \
        dist.get_rank() * x.shape[0]
