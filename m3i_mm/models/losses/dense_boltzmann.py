"""Boltzmann posterior over the positions of a dense target (Table 2 (h))."""
import torch
import torch.nn.functional as F

from m3i_mm.registry import MODELS
from .posteriors import BoltzmannPosterior


@MODELS.register_module()
class DenseBoltzmannPosterior(BoltzmannPosterior):
    """``-log softmax_k(ẑ_qᵀ z_k / τ)`` at the true position, per image.

    Dense instance discrimination (DenseCL-like, paper Table 2 (h) and
    Table 5): the prediction for target patch q of an image must pick that
    patch's feature among the features of all positions of the same target
    image; the other positions are the negative samples that prevent
    collapse. Same arguments as :class:`BoltzmannPosterior` (use
    ``normalize=True`` and a temperature such as 0.2 for cosine energies).
    Computed in fp32.
    """

    def forward(self, pred: torch.Tensor, candidates: torch.Tensor,
                target_index: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all predicted positions.

        Args:
            pred (Tensor): (N, Q, D) predictions at Q target positions.
            candidates (Tensor): (N, K, D) the target features at all K
                positions of each image (no gradient needed).
            target_index (Tensor): (N, Q) long, the position in ``[0, K)``
                of each prediction's true target.

        Returns:
            Tensor: Scalar loss.

        Raises:
            ValueError: Shapes that do not match as above.
        """
        if pred.dim() != 3 or candidates.dim() != 3 or \
                pred.shape[0] != candidates.shape[0] or \
                pred.shape[2] != candidates.shape[2] or \
                target_index.shape != pred.shape[:2]:
            raise ValueError(
                f'expected (N, Q, D) predictions, (N, K, D) candidates and '
                f'(N, Q) indices, got {tuple(pred.shape)}, '
                f'{tuple(candidates.shape)} and {tuple(target_index.shape)}')
        with torch.autocast(pred.device.type, enabled=False):
            pred, candidates = pred.float(), candidates.detach().float()
            if self.normalize:
                pred = F.normalize(pred, dim=-1)
                candidates = F.normalize(candidates, dim=-1)
            logits = pred @ candidates.transpose(1, 2) / self.temperature
            return self.loss_weight * F.cross_entropy(
                logits.flatten(0, 1),
                target_index.flatten(),
                label_smoothing=self.label_smoothing)
