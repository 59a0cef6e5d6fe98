"""Barlow Twins' redundancy-reduction posterior on global features."""
import torch
import torch.nn as nn

from mmpretrain.models.losses import CrossCorrelationLoss
from m3i_mm.registry import MODELS
from ..utils.distributed import gather_with_grad
from ..utils.precision import fp32_region


def batch_standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' batch norm of the embeddings (no affine): each
    dimension of (N, D) ``x`` minus its batch mean, divided by
    ``sqrt(var + eps)`` with the biased batch variance (what
    ``nn.BatchNorm1d(D, affine=False)`` computes in training)."""
    mean = x.mean(0)
    var = x.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def cross_correlation(pred: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
    """Barlow Twins' (D, D) cross-correlation ``C = âᵀ b̂ / N`` of the
    batch-standardised predictions and targets of all ranks.

    Both are gathered over ranks (the prediction differentiably, see
    :func:`gather_with_grad`), so the statistics and the mean are those of
    the global batch, as BT's SyncBatchNorm and all-reduced ``C``.

    Args:
        pred (Tensor): (N, D) predictions, the same N on every rank.
        target (Tensor): (N, D) targets (no gradient).

    Returns:
        Tensor: (D, D) ``C[i, j]``, in [-1, 1] up to eps.
    """
    pred = gather_with_grad(pred)[0]
    target = gather_with_grad(target.detach())[0]
    return batch_standardize(pred).T @ batch_standardize(target) / \
        pred.shape[0]


@MODELS.register_module()
class BarlowTwinsPosterior(nn.Module):
    """Gaussian fit with Barlow Twins' decorrelation regulariser (Table 5,
    footnote 3; Zbontar et al., ICML 2021, Eq. 1)::

        L = Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij²

    on the cross-correlation ``C`` (:func:`cross_correlation`) of the
    predictions ẑ_y and the targets z_y of the global batch. The
    on-diagonal term is the Gaussian fit of the standardised features
    (``1 - C_ii = E[(â_i - b̂_i)²] / 2``); the off-diagonal term is the
    regulariser for H(p(z_y | t_y)) that replaces negatives (Boltzmann)
    or the stop-gradient alone (BYOL). The sum is mmpretrain's
    ``CrossCorrelationLoss``. Unlike BT, whose two branches share weights
    and both receive gradients, the target here is the framework's z_y
    (no gradient).

    Args:
        lambd (float): λ, the off-diagonal weight; BT's paper 5e-3.
        loss_weight (float): Multiplier. Defaults to 1.

    Raises:
        ValueError: ``lambd`` < 0.
    """

    def __init__(self, lambd: float = 5e-3, loss_weight: float = 1.0) -> None:
        super().__init__()
        if lambd < 0:
            raise ValueError(f'lambd must be >= 0, got {lambd}')
        self.loss = CrossCorrelationLoss(lambd=lambd)
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar fp32 loss of (N, D) predictions and (N, D) targets.

        Raises:
            ValueError: Shapes differ or are not (N, D) with N >= 2 (a batch
                statistic needs two samples).
        """
        if pred.shape != target.shape or pred.dim() != 2 or \
                pred.shape[0] < 2:
            raise ValueError(f'BarlowTwinsPosterior needs (N, D) predictions '
                             f'and targets of one shape with N >= 2, got '
                             f'{tuple(pred.shape)} and {tuple(target.shape)}')
        with fp32_region(pred.device):
            corr = cross_correlation(pred.float(), target.float())
            return self.loss_weight * self.loss(corr)
