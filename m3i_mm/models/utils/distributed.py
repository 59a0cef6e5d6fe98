"""Collectives of the M3I losses (candidates and sample counts of all ranks).

Every function here is called by every rank in the same order, and only
ever hands tensors on the caller's (the model's) device to a collective,
as NCCL requires.
"""
from typing import Tuple

import torch
import torch.distributed as dist
# The functional collectives: the autograd all_gather that torch.compile
# keeps in its graph (torch.distributed.nn's breaks it, and dynamo then
# runs the whole loss eagerly under DDP).
import torch.distributed._functional_collectives as funcol

# all_gather_single_autograd since torch 2.13 (the old name warns there).
_all_gather_autograd = getattr(funcol, 'all_gather_single_autograd',
                               funcol.all_gather_tensor_autograd)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_with_grad(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate ``x`` from all ranks, differentiably.

    Uses torch's autograd-aware functional ``all_gather`` (traceable by
    ``torch.compile``): the backward pass sums the gradients every rank
    computed for a slice and hands them to the rank that owns it
    (reduce-scatter), so the local slice receives exactly the gradient of
    the global loss (negatives on other ranks included). Every rank must
    therefore use the result in its loss (with zero weight if it has nothing
    to score), or the backward collective is left waiting. Without an
    initialised process group it returns ``x`` itself.

    Args:
        x (Tensor): (N, ...) the local batch; all ranks must use the same N.

    Returns:
        tuple[Tensor, int]: The (world_size * N, ...) concatenation and the
        offset of the local slice in it.
    """
    if not _distributed():
        return x, 0
    # Waited for here, as the synchronous gather did (the functional one
    # returns a tensor whose collective may still be running).
    gathered = funcol.wait_tensor(
        _all_gather_autograd(x.contiguous(), 0, dist.group.WORLD))
    return gathered, dist.get_rank() * x.shape[0]


def per_rank_share(count: torch.Tensor) -> torch.Tensor:
    """The divisor that turns a local sum into a share of the global mean.

    With ``L_r = sum_r / per_rank_share(count_r)`` on each of the W ranks,
    the mean over ranks that DDP applies to the gradients is the gradient of
    ``sum_all / count_all``: a global loss averaged over the samples that
    have its target, however they are spread over the ranks (one rank may
    have none). Without a process group this is ``count`` itself.

    Args:
        count (Tensor): 0-dim, this rank's number of samples (any dtype), on
            the model's device.

    Returns:
        Tensor: 0-dim float ``max(count_all, 1) / W``.
    """
    total = count.detach().float().clone()
    if not _distributed():
        return total.clamp(min=1)
    dist.all_reduce(total)
    return total.clamp(min=1) / dist.get_world_size()


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over all ranks (no gradient), e.g. a batch
    statistic of the targets. Without a process group this is ``x``.

    Args:
        x (Tensor): Same shape on every rank, on the model's device.

    Returns:
        Tensor: A new tensor with the mean.
    """
    mean = x.detach().clone()
    if not _distributed():
        return mean
    dist.all_reduce(mean)
    return mean / dist.get_world_size()
