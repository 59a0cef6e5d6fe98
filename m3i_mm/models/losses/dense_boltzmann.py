"""Boltzmann posterior over the positions of a dense target (Table 2 (h))."""
import torch
import torch.nn.functional as F

from m3i_mm.registry import MODELS
from ..utils.distributed import gather_with_grad
from .posteriors import BoltzmannPosterior

NEGATIVES = ('all_images', 'same_image')


@MODELS.register_module()
class DenseBoltzmannPosterior(BoltzmannPosterior):
    """``-log softmax_k(ẑ_qᵀ z_k / τ)`` at ``k = q``: dense instance
    discrimination.

    Dense instance discrimination (DenseCL-like, paper Table 2 (h) and
    Table 5, regulariser "negative samples"): the prediction for target
    patch q of image n must pick that patch's target feature among the
    candidates. Eq. (3)'s candidates span all target representations and
    DenseCL contrasts with other images' features, so by default
    (``negatives='all_images'``) the candidates are every position of every
    target image of the batch, gathered from all ranks (detached: no
    gradient flows into the targets or to other ranks);
    ``negatives='same_image'`` keeps only the positions of the own image.

    Cost: ``'all_images'`` builds (N·Q, W·N·Q) fp32 logits per rank (W
    ranks), e.g. 32 images x 196 positions on one rank: 6,272² x 4 B = 157
    MB (plus its gradient); at 512 images per GPU on 8 GPUs it would be
    ~320 GB, so use ``'same_image'`` ((N, Q, Q): 79 MB there) or a smaller
    per-GPU batch at that scale.

    Called like :class:`GaussianPosterior`, with matched (N, Q, D)
    predictions and targets. Other arguments as :class:`BoltzmannPosterior`
    (use ``normalize=True`` and a temperature such as 0.2 for cosine
    energies). Computed in fp32, also under autocast.

    Args:
        negatives (str): ``'all_images'`` (default) or ``'same_image'``.
        **kwargs: :class:`BoltzmannPosterior`'s arguments.

    Raises:
        ValueError: ``negatives`` not one of the two.
    """

    def __init__(self, negatives: str = 'all_images', **kwargs) -> None:
        super().__init__(**kwargs)
        if negatives not in NEGATIVES:
            raise ValueError(f'negatives must be one of {NEGATIVES}, got '
                             f'{negatives!r}')
        self.negatives = negatives

    def forward(self, pred: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all predicted positions.

        Args:
            pred (Tensor): (N, Q, D) predictions at Q target positions.
            target (Tensor): (N, Q, D) the target features at the same
                positions (no gradient needed): row (n, q) is the positive
                of prediction (n, q); with ``'all_images'`` every rank must
                pass the same N and Q (a collective).

        Returns:
            Tensor: Scalar loss.

        Raises:
            ValueError: Shapes other than two equal (N, Q, D).
        """
        if pred.dim() != 3 or pred.shape != target.shape:
            raise ValueError(
                f'expected (N, Q, D) predictions and targets of the same '
                f'shape, got {tuple(pred.shape)} and {tuple(target.shape)}')
        n, q = pred.shape[:2]
        if self.negatives == 'all_images':
            # Instance discrimination over the N·Q positions of all ranks.
            candidates, offset = gather_with_grad(
                target.detach().flatten(0, 1))
            return super().forward(
                pred.flatten(0, 1), candidates,
                offset + torch.arange(n * q, device=pred.device))
        with torch.autocast(pred.device.type, enabled=False):
            pred, target = pred.float(), target.detach().float()
            if self.normalize:
                pred = F.normalize(pred, dim=-1)
                target = F.normalize(target, dim=-1)
            logits = (pred @ target.transpose(1, 2)).flatten(0, 1)
            return self.loss_weight * F.cross_entropy(
                logits / self.temperature,
                torch.arange(q, device=pred.device).repeat(n),
                label_smoothing=self.label_smoothing)
