"""Federated sigmoid classification loss for LVIS (Zhou et al., 2021), as
ViTDet trains its LVIS box classifiers.

LVIS annotates each image only for some categories, so a per-class sigmoid
cross-entropy is computed, in each batch, over a subset of the classes: the
ground-truth classes of the sampled RoIs plus negative classes drawn without
replacement with probability ``image_count ** freq_weight_power`` until
``num_fed_classes`` classes are used (background counts as one, as in
detectron2). Every RoI's loss sums over the chosen classes; the total is
divided by the number of RoIs (mmdet's ``avg_factor``).

For mmdet's :class:`BBoxHead` the loss sets the classifier width to
``num_classes`` (no background logit) and gives the scores
``[sigmoid(logits), 1 - max sigmoid]``: a box's class scores are independent
probabilities, and the background column (dropped by NMS) makes a box
background for the accuracy when no class reaches 0.5.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.losses import accuracy
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.fileio import load

__all__ = ['FederatedSigmoidLoss', 'load_class_image_counts']


def load_class_image_counts(ann_file: str) -> list:
    """Per-class training image counts from an LVIS annotation file.

    Args:
        ann_file (str): LVIS json whose ``categories`` carry ``image_count``,
            in the label order of mmdet's LVIS datasets (file order).

    Returns:
        list[int]: ``image_count`` of each category.
    """
    categories = load(ann_file).get('categories')
    if not categories:
        raise ValueError(f'{ann_file}: no "categories" list')
    missing = [c.get('id') for c in categories if 'image_count' not in c]
    if missing:
        raise ValueError(f'{ann_file}: categories {missing[:5]} have no '
                         f'"image_count" (needed for the federated loss)')
    return [int(c['image_count']) for c in categories]


@MMDET_MODELS.register_module()
class FederatedSigmoidLoss(nn.Module):
    """Sigmoid cross-entropy over a sampled subset of classes.

    Args:
        num_classes (int): Foreground classes.
        class_image_counts (Sequence[int], optional): Training images per
            class, for the negative-class sampling weights.
        ann_file (str, optional): LVIS annotation file to read the counts
            from (:func:`load_class_image_counts`) instead.
        num_fed_classes (int): Classes per batch, background included.
            Defaults to 50.
        freq_weight_power (float): Sampling weight = count ** power.
            Defaults to 0.5.
        loss_weight (float): Loss weight. Defaults to 1.
    """

    def __init__(self,
                 num_classes: int,
                 class_image_counts: Optional[Sequence[int]] = None,
                 ann_file: Optional[str] = None,
                 num_fed_classes: int = 50,
                 freq_weight_power: float = 0.5,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if (class_image_counts is None) == (ann_file is None):
            raise ValueError('FederatedSigmoidLoss: give exactly one of '
                             'class_image_counts and ann_file')
        self.num_classes = num_classes
        self.num_fed_classes = num_fed_classes
        self.freq_weight_power = freq_weight_power
        self.loss_weight = loss_weight
        self.ann_file = ann_file
        self._class_weights = None
        if class_image_counts is not None:
            self._class_weights = self._sampling_weights(class_image_counts)
        # Tell mmdet's BBoxHead to use get_cls_channels / get_activation /
        # get_accuracy.
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    @property
    def class_weights(self) -> torch.Tensor:
        """(C, ) negative-class sampling weights (``ann_file`` is read on
        first use, i.e. in the first training step, not for testing)."""
        if self._class_weights is None:
            self._class_weights = self._sampling_weights(
                load_class_image_counts(self.ann_file))
        return self._class_weights

    def _sampling_weights(self, counts: Sequence[int]) -> torch.Tensor:
        if len(counts) != self.num_classes:
            source = f' in {self.ann_file}' if self.ann_file else ''
            raise ValueError(
                f'FederatedSigmoidLoss: {len(counts)} class image counts'
                f'{source} for num_classes={self.num_classes}')
        return torch.as_tensor(
            counts, dtype=torch.float).pow(self.freq_weight_power)

    def get_cls_channels(self, num_classes: int) -> int:
        """Classifier width: one logit per foreground class."""
        if num_classes != self.num_classes:
            raise ValueError(f'FederatedSigmoidLoss has num_classes='
                             f'{self.num_classes}, the head {num_classes}')
        return num_classes

    def get_activation(self, cls_score: torch.Tensor) -> torch.Tensor:
        """(N, C) logits to (N, C + 1) scores, background last."""
        probs = cls_score.sigmoid()
        background = 1 - probs.max(dim=-1, keepdim=True).values
        return torch.cat([probs, background], dim=-1)

    def get_accuracy(self, cls_score: torch.Tensor,
                     labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Accuracy over the C + 1 scores of :meth:`get_activation`."""
        return dict(acc=accuracy(self.get_activation(cls_score), labels))

    def sample_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """Classes of this batch's loss: ground truth + sampled negatives.

        Args:
            labels (torch.Tensor): (N, ) RoI labels, ``num_classes`` for
                background.

        Returns:
            torch.Tensor: (C, ) 0/1 mask over the foreground classes.
        """
        present = torch.unique(labels)
        chosen = torch.zeros(self.num_classes + 1, device=labels.device)
        chosen[present] = 1
        if len(present) < self.num_fed_classes:
            if self.class_weights.device != labels.device:  # move once
                self._class_weights = self.class_weights.to(labels.device)
            prob = torch.cat(
                [self._class_weights,
                 self._class_weights.new_zeros(1)])
            prob[present] = 0
            num_negatives = min(self.num_fed_classes - len(present),
                                int((prob > 0).sum()))
            if num_negatives > 0:
                chosen[torch.multinomial(prob, num_negatives)] = 1
        return chosen[:self.num_classes]

    def forward(self,
                cls_score: torch.Tensor,
                labels: torch.Tensor,
                label_weights: Optional[torch.Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> torch.Tensor:
        """Federated loss of the RoIs.

        Args:
            cls_score (torch.Tensor): (N, C) logits.
            labels (torch.Tensor): (N, ) labels, C for background.
            label_weights (torch.Tensor, optional): (N, ) RoI weights.
            avg_factor (float, optional): Divisor of the sum for ``'mean'``
                (mmdet passes the number of RoIs); defaults to N.
            reduction_override (str, optional): ``'none'`` returns the
                (N, ) per-RoI losses; ``'sum'`` / ``'mean'`` as mmdet's
                ``weight_reduce_loss``.

        Returns:
            torch.Tensor: The loss.
        """
        if cls_score.shape[-1] != self.num_classes:
            raise ValueError(f'FederatedSigmoidLoss: cls_score has '
                             f'{cls_score.shape[-1]} channels, expected '
                             f'num_classes={self.num_classes}')
        target = F.one_hot(labels, self.num_classes + 1)[:, :-1]
        loss = F.binary_cross_entropy_with_logits(
            cls_score, target.to(cls_score.dtype), reduction='none')
        loss = (loss * self.sample_classes(labels)).sum(dim=-1)
        if label_weights is not None:
            label_weights = label_weights.to(loss.dtype)
        return self.loss_weight * weight_reduce_loss(
            loss, label_weights, reduction_override or 'mean', avg_factor)
