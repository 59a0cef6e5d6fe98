"""Boltzmann posterior over a tokenizer's codebook (BEiT-style targets)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from m3i_mm.registry import MODELS
from ..utils.precision import fp32_region


@MODELS.register_module()
class CodebookBoltzmannPosterior(nn.Module):
    """``-log softmax(ẑ_y)[k]`` of the true codebook entry ``k`` of each
    target patch: the Boltzmann posterior whose candidates are the K
    entries of a discrete tokenizer's codebook (Table 5, footnote 2: the
    dVAE of BEiT, the VQ-KD tokenizer of BEiT v2). The decoder outputs K
    logits per patch (its last linear layer holds the learned energies of
    the entries); the loss is BEiT's cross-entropy at the predicted patches.
    Computed in fp32.

    Args:
        label_smoothing (float): Of the cross-entropy. Defaults to 0.
        loss_weight (float): Multiplier. Defaults to 1.
    """

    def __init__(self, label_smoothing: float = 0.0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all predicted patches.

        Args:
            pred (Tensor): (N, L, K) logits over the codebook.
            target (Tensor): (N, L) integer codebook ids in [0, K), e.g. of
                :class:`DiscreteTokenTarget`.

        Returns:
            Tensor: Scalar loss.

        Raises:
            ValueError: ``target`` is not integer ids of ``pred``'s (N, L).
        """
        if target.is_floating_point() or pred.shape[:-1] != target.shape:
            raise ValueError(
                f'CodebookBoltzmannPosterior needs (N, L, K) logits and '
                f'(N, L) integer codebook ids (a DiscreteTokenTarget), got '
                f'{tuple(pred.shape)} and {tuple(target.shape)} '
                f'{target.dtype}')
        with fp32_region(pred.device):
            return self.loss_weight * F.cross_entropy(
                pred.float().flatten(0, -2), target.flatten(),
                label_smoothing=self.label_smoothing)
