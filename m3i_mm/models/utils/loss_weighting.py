"""Dynamic loss weighting of M3I (paper appendix B.1, Eq. 13).

``L = L_SSP + λ·L_SP`` with ``λ = γ · ḡ_uni / ḡ_multi``, where ``ḡ`` are
exponential moving averages of the gradient norms that the uni-modal
(self-supervised, image targets) and the multi-modal (category / text
targets) losses send back to the features fed to their heads.

No extra backward pass is run: the features go to each group of heads
through an identity "tap" whose backward records the norm of the gradient
passing through it. λ for a step is computed from the norms measured up to
the previous step and is a constant for autograd.

All state is in persistent buffers (the measurement waiting for the next
step included), so it moves with ``model.to(device)`` and a resumed run
continues with the same λ. A non-finite measurement (an fp16 overflow: the
loss scaler skips that step) is dropped, not folded into the averages.
"""
import logging

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.logging import print_log

from m3i_mm.registry import MODELS

GROUPS = ('uni', 'multi')


class _GradNormTap(torch.autograd.Function):
    """Identity whose backward adds the gradient's squared norm (fp32) to a
    slot of ``store``."""

    @staticmethod
    def forward(ctx, x, store, index):
        ctx.store, ctx.index = store, index
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.store[ctx.index] += grad.detach().float().pow(2).sum()
        return grad, None, None


@MODELS.register_module()
class GradientNormBalancer(nn.Module):
    """λ = γ · EMA(‖∂L_uni/∂z‖) / EMA(‖∂L_multi/∂z‖), measured by taps.

    Usage in an algorithm's ``loss``::

        lam = balancer.step()                 # λ for this iteration
        z_uni = balancer.tap(z, 'uni')        # -> image decoders
        z_multi = balancer.tap(z, 'multi')    # -> category / text heads
        loss = loss_uni + lam * loss_multi

    The EMAs are bias-corrected (as in Adam), so the first measurement is
    used in full; before any measurement λ = γ. The multi-modal norm is
    measured on ``λ·L_multi`` and divided by the λ in force. Norms are
    accumulated in fp32 whatever the autocast dtype; under a loss scaler both
    carry the same scale, which cancels in the ratio of one step.

    Under ``torch.distributed`` every rank all-reduces the squared norms (on
    the buffers' device, i.e. the model's) in :meth:`reduce_pending`, called
    by :meth:`step` or earlier, after the backward, by
    :class:`~m3i_mm.engine.GradientNormSyncHook` so that the checkpoint
    (written by rank 0 alone) holds the mean of all ranks. A measurement with
    an inf/nan on any rank is skipped by all ranks, counted in
    ``num_skipped`` and logged (at the 1st, 2nd, 4th, 8th, ... skip).

    Args:
        gamma (float): Gradient ratio γ. Defaults to 1 (Table 13).
        momentum (float): EMA decay of the norms. Defaults to 0.9.
        eps (float): Guards the division. Defaults to 1e-12.
    """

    def __init__(self,
                 gamma: float = 1.0,
                 momentum: float = 0.9,
                 eps: float = 1e-12) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f'momentum must be in [0, 1), got {momentum}')
        self.gamma = gamma
        self.momentum = momentum
        self.eps = eps
        self.register_buffer('ema_norms', torch.zeros(2))
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.long))
        self.register_buffer('weight', torch.tensor(float(gamma)))
        # Squared norms recorded by the taps since the last step (checkpointed:
        # the next step folds them in).
        self.register_buffer('pending_norms', torch.zeros(2))
        # True once pending_norms holds the mean over ranks.
        self.register_buffer('pending_reduced',
                             torch.zeros((), dtype=torch.bool))
        self.register_buffer('num_skipped', torch.zeros((), dtype=torch.long))

    def tap(self, x: torch.Tensor, group: str) -> torch.Tensor:
        """Identity on ``x`` that measures the gradient of ``group``."""
        if group not in GROUPS:
            raise ValueError(f'group must be one of {GROUPS}, got {group!r}')
        if not (self.training and x.requires_grad):
            return x
        return _GradNormTap.apply(x, self.pending_norms, GROUPS.index(group))

    @torch.no_grad()
    def reduce_pending(self) -> None:
        """Average the measurement over all ranks, once per step.

        Every rank must call it (a rank whose batch had no multi-modal target
        measured 0 and must not skip the collective).
        """
        if bool(self.pending_reduced):
            return
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.pending_norms)
            self.pending_norms /= dist.get_world_size()
        self.pending_reduced.fill_(True)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Fold the last measured norms into the EMAs; return this step's λ.

        Returns:
            Tensor: λ (a 0-dim tensor without gradient).
        """
        self.reduce_pending()
        pending = self.pending_norms
        if not bool(torch.isfinite(pending).all()):
            self.num_skipped += 1
            skipped = int(self.num_skipped)
            if skipped & (skipped - 1) == 0:
                print_log(
                    f'GradientNormBalancer: non-finite gradient norms '
                    f'{pending.tolist()} (e.g. an fp16 overflow) not used '
                    f'for λ; {skipped} step(s) skipped so far',
                    logger='current',
                    level=logging.WARNING)
        elif bool((pending > 0).all()):
            norms = pending.to(self.ema_norms).sqrt()
            # Undo the λ scaling: self.weight is still the λ of that step.
            norms[1] = norms[1] / self.weight
            self.ema_norms.mul_(self.momentum).add_(
                norms, alpha=1 - self.momentum)
            self.num_updates += 1
            ema = self.mean_norms
            self.weight.fill_(self.gamma * float(ema[0]) /
                              max(float(ema[1]), self.eps))
        pending.zero_()
        self.pending_reduced.fill_(False)
        return self.weight.clone()

    @property
    def mean_norms(self) -> torch.Tensor:
        """(2,) bias-corrected EMAs (ḡ_uni, ḡ_multi) of the gradient
        norms (ḡ_multi per unit λ), whose ratio is the current λ; zeros
        before the first measurement."""
        updates = int(self.num_updates)
        if updates == 0:
            return torch.zeros_like(self.ema_norms)
        return self.ema_norms / (1 - self.momentum**updates)

    def extra_repr(self) -> str:
        return f'gamma={self.gamma}, momentum={self.momentum}'
