"""Approximate posteriors P(z_y | ẑ_y) of the mutual-information framework.

The prediction term of Eq. (3) is ``-log P(z_y | ẑ_y)``; its form decides the
loss (paper Sec. 3.1):

- Gaussian ``N(ẑ_y, σ²I)``  -> L2 between prediction and target.
- Boltzmann ``∝ exp(ẑ_yᵀ z_y / τ)`` -> softmax cross-entropy of the
  prediction against a set of candidate target representations (negative
  categories, negative texts or negative samples prevent collapse).

Both compute in fp32 under autocast (mixed precision): the energies, the
normalisations and the softmax need its range.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from m3i_mm.registry import MODELS
from ..utils.distributed import mean_over_ranks
from ..utils.precision import fp32_region


def decorrelation_term(pred: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    """UniGrad's negative term ``mean_i ẑ_iᵀ C ẑ_i / D`` (see
    :class:`GaussianPosterior`).

    Args:
        pred (Tensor): (..., D) predictions.
        target (Tensor): (..., D) targets; ``C`` is their (D, D) second
            moment over all vectors, averaged over ranks (a collective:
            every rank calls this in the same order).

    Returns:
        Tensor: Scalar, >= 0.
    """
    dims = target.shape[-1]
    target = target.detach().reshape(-1, dims)
    corr = mean_over_ranks(target.T @ target / max(target.shape[0], 1))
    pred = pred.reshape(-1, dims)
    return ((pred @ corr) * pred).sum(-1).mean() / dims


@MODELS.register_module()
class GaussianPosterior(nn.Module):
    """``-log N(z_y; ẑ_y, σ²I)`` up to a constant: mean squared error, with
    an optional decorrelation term for the regulariser H(p(z_y | t_y)).

    Eq. (2) maximises H(p(z_y | t_y)) - H(p(z_y), P̂(z_y | ẑ_y)); a Gaussian
    posterior alone scores only the second term, and a target encoder that
    maps every image to the same features minimises it (collapse). Stop-
    gradient and a slow momentum guard against that at scale (Table 5); the
    decorrelation term (appendix Table 6, "decorrelation") is the explicit
    guard: UniGrad's negative term (Tao et al., CVPR 2022), which SiameseIM
    [67] trains with (``--neg_weight 0.02``)::

        L = (||ẑ - z||² + w ẑᵀ C ẑ) / D,   C = E[z zᵀ] over all target
        vectors of the batch (averaged over ranks), no gradient through C.

    It pushes predictions away from the directions the targets share:
    identical layer-normalised targets for every image cost ``w * D``
    instead of nothing, decorrelated ones about ``w``.

    Args:
        normalize_target (bool): Layer-normalise each target vector (no
            affine) before the loss, as feature-target methods do.
            Defaults to True.
        loss_weight (float): ``1 / (2σ²)``. Defaults to 1.
        decorrelation_weight (float): ``w`` above; 0 = plain MSE.
            Defaults to 0.

    Raises:
        ValueError: If ``decorrelation_weight`` is negative.
    """

    def __init__(self, normalize_target: bool = True,
                 loss_weight: float = 1.0,
                 decorrelation_weight: float = 0.0) -> None:
        super().__init__()
        if decorrelation_weight < 0:
            raise ValueError('decorrelation_weight must be >= 0, got '
                             f'{decorrelation_weight}')
        self.normalize_target = normalize_target
        self.loss_weight = loss_weight
        self.decorrelation_weight = decorrelation_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss averaged over all predicted vectors and channels.

        Args:
            pred (Tensor): (..., C) predictions ẑ_y.
            target (Tensor): (..., C) targets z_y (no gradient needed).

        Returns:
            Tensor: Scalar loss.
        """
        if pred.shape != target.shape:
            raise ValueError(f'prediction {tuple(pred.shape)} and target '
                             f'{tuple(target.shape)} differ in shape')
        with fp32_region(pred.device):
            target = target.detach().float()
            if self.normalize_target:
                target = F.layer_norm(target, target.shape[-1:], eps=1e-6)
            loss = F.mse_loss(pred.float(), target)
            if self.decorrelation_weight:
                loss = loss + self.decorrelation_weight * decorrelation_term(
                    pred.float(), target)
            return self.loss_weight * loss


@MODELS.register_module()
class BoltzmannPosterior(nn.Module):
    """``-log softmax(ẑ_yᵀ z'_y / τ)`` at the true target among candidates.

    Args:
        temperature (float): τ. Defaults to 1 (a plain linear classifier).
        label_smoothing (float): Label smoothing of the cross-entropy.
            Defaults to 0.
        normalize (bool): L2-normalise predictions and candidates first
            (cosine similarities, as in contrastive losses). Defaults to False.
        loss_weight (float): Multiplier. Defaults to 1.
    """

    def __init__(self,
                 temperature: float = 1.0,
                 label_smoothing: float = 0.0,
                 normalize: bool = False,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.normalize = normalize
        self.loss_weight = loss_weight

    def logits(self,
               pred: torch.Tensor,
               candidates: torch.Tensor,
               bias: Optional[torch.Tensor] = None,
               temperature: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Energies ``ẑ_yᵀ z'_y / τ`` of every prediction and candidate,
        (N, K), in the dtype of the inputs (:meth:`forward` passes fp32)."""
        if self.normalize:
            pred = F.normalize(pred, dim=-1)
            candidates = F.normalize(candidates, dim=-1)
        logits = pred @ candidates.t()
        if bias is not None:
            logits = logits + bias
        return logits / (self.temperature if temperature is None else
                         temperature)

    def forward(self,
                pred: torch.Tensor,
                candidates: torch.Tensor,
                target_index: torch.Tensor,
                bias: Optional[torch.Tensor] = None,
                temperature: Optional[torch.Tensor] = None,
                candidate_mask: Optional[torch.Tensor] = None,
                avg_factor: Optional[torch.Tensor] = None,
                sample_weight: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """Cross-entropy of the true candidate, computed in fp32.

        Args:
            pred (Tensor): (N, D) predictions ẑ_y.
            candidates (Tensor): (K, D) target representations z'_y, e.g.
                all category embeddings or the texts of the batch.
            target_index (Tensor): (N,) index of each true target in
                ``candidates``.
            bias (Tensor, optional): (K,) added to the energies.
            temperature (Tensor, optional): Overrides τ (e.g. learnable).
            candidate_mask (Tensor, optional): (K,) bool, False = not a
                candidate (e.g. the padding of a sample without text).
            avg_factor (Tensor, optional): Divide the summed cross-entropy by
                this instead of N (e.g. a share of a global sample count,
                see :func:`~m3i_mm.models.utils.per_rank_share`).
            sample_weight (Tensor, optional): (N,) weight of each row's
                cross-entropy, e.g. 0/1 for "has this target": rows are
                masked out instead of selected, so shapes stay fixed (one
                ``torch.compile`` graph). Needs ``avg_factor``.

        Returns:
            Tensor: Scalar fp32 loss. For N = 0 it is 0 and still depends on
            ``pred``, ``candidates``, ``bias`` and ``temperature``, so every
            parameter behind them receives a (zero) gradient, as DDP with
            ``find_unused_parameters=False`` requires of every rank.
        """
        if pred.dim() != 2 or candidates.dim() != 2 or \
                pred.shape[1] != candidates.shape[1]:
            raise ValueError(f'expected (N, D) predictions and (K, D) '
                             f'candidates, got {tuple(pred.shape)} and '
                             f'{tuple(candidates.shape)}')
        with fp32_region(pred.device):
            logits = self.logits(
                pred.float(), candidates.float(),
                None if bias is None else bias.float(),
                None if temperature is None else temperature.float())
            if pred.shape[0] == 0:
                return logits.sum() * 0.0
            if candidate_mask is not None:
                logits = logits.masked_fill(~candidate_mask, float('-inf'))
            if sample_weight is not None:
                if avg_factor is None:
                    raise ValueError('sample_weight needs avg_factor')
                # Selected, not multiplied: a weight-0 row may have a masked
                # target (an infinite cross-entropy; 0 * inf is NaN).
                loss = (F.cross_entropy(
                    logits, target_index, reduction='none',
                    label_smoothing=self.label_smoothing).masked_fill(
                        sample_weight == 0, 0.) *
                        sample_weight.to(logits.dtype)).sum()
            else:
                loss = F.cross_entropy(
                    logits,
                    target_index,
                    reduction='mean' if avg_factor is None else 'sum',
                    label_smoothing=self.label_smoothing)
            if avg_factor is not None:
                loss = loss / avg_factor
            return self.loss_weight * loss
