"""Boltzmann posterior over the positions of a dense target (Table 2 (h))."""
import torch
import torch.nn.functional as F

from m3i_mm.registry import MODELS
from .posteriors import BoltzmannPosterior


@MODELS.register_module()
class DenseBoltzmannPosterior(BoltzmannPosterior):
    """``-log softmax_k(ẑ_qᵀ z_k / τ)`` at ``k = q``, per image.

    Dense instance discrimination (DenseCL-like, paper Table 2 (h) and
    Table 5): the prediction for target patch q of an image must pick that
    patch's feature among the target features of all predicted positions of
    the same image (every position of the other view in Table 2 (h)); the
    other positions are the negative samples that prevent collapse. Called
    like :class:`GaussianPosterior`, with matched (N, Q, D) predictions and
    targets. Same arguments as :class:`BoltzmannPosterior` (use
    ``normalize=True`` and a temperature such as 0.2 for cosine energies).
    Computed in fp32, also under autocast.
    """

    def forward(self, pred: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all predicted positions.

        Args:
            pred (Tensor): (N, Q, D) predictions at Q target positions.
            target (Tensor): (N, Q, D) the target features at the same
                positions (no gradient needed): row q is the positive of
                prediction q, the other rows its negatives.

        Returns:
            Tensor: Scalar loss.

        Raises:
            ValueError: Shapes other than two equal (N, Q, D).
        """
        if pred.dim() != 3 or pred.shape != target.shape:
            raise ValueError(
                f'expected (N, Q, D) predictions and targets of the same '
                f'shape, got {tuple(pred.shape)} and {tuple(target.shape)}')
        with torch.autocast(pred.device.type, enabled=False):
            pred, target = pred.float(), target.detach().float()
            if self.normalize:
                pred = F.normalize(pred, dim=-1)
                target = F.normalize(target, dim=-1)
            logits = pred @ target.transpose(1, 2) / self.temperature
            positives = torch.arange(
                pred.shape[1], device=pred.device).repeat(pred.shape[0])
            return self.loss_weight * F.cross_entropy(
                logits.flatten(0, 1), positives,
                label_smoothing=self.label_smoothing)
