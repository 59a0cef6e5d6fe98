"""Top-k accuracy that counts tied scores against the prediction."""
from typing import List, Sequence, Union

import numpy as np
import torch
from mmpretrain.evaluation.metrics import Accuracy
from mmpretrain.evaluation.metrics.single_label import to_tensor

from m3i_mm.registry import METRICS


def tie_aware_topk_accuracy(
        scores: torch.Tensor,
        target: torch.Tensor,
        topk: Sequence[int] = (1, ),
        thrs: Sequence[Union[float, None]] = (0., ),
) -> List[List[torch.Tensor]]:
    """Top-k accuracy of class scores, ranking ties pessimistically.

    Sample ``i`` is correct at ``k`` iff fewer than ``k`` other classes
    score at least as high as its true class (a NaN score ranks above
    everything; a NaN true score is wrong) and, as in mmpretrain, its true
    score is above the threshold. Without ties or NaN this equals
    mmpretrain's ``Accuracy.calculate``.

    Args:
        scores (torch.Tensor): ``(N, C)`` class scores.
        target (torch.Tensor): ``(N, )`` true classes.
        topk (Sequence[int]): The k of top-k. Defaults to ``(1, )``.
        thrs (Sequence[float | None]): True scores must be above each
            threshold; None applies none. Defaults to ``(0., )``.

    Returns:
        list[list[torch.Tensor]]: Accuracy in percent (a ``(1, )`` tensor)
        for each k (first index) and threshold (second index).
    """
    scores = scores.float()
    true = scores.gather(1, target.view(-1, 1).to(torch.int64))
    rank = ((scores >= true) | scores.isnan()).sum(1) - 1
    true = true.view(-1)
    rank[true.isnan()] = scores.size(1)
    results = []
    for k in topk:
        row = []
        for thr in thrs:
            hit = rank < k
            if thr is not None:
                hit &= true > thr
            row.append(hit.float().sum(0, keepdim=True).mul_(
                100. / scores.size(0)))
        results.append(row)
    return results


@METRICS.register_module()
class TieAwareAccuracy(Accuracy):
    """mmpretrain's ``Accuracy`` with tied scores counted as wrong.

    mmpretrain 1.2.0 / onedl-mmpretrain 1.3.6 ``Accuracy.calculate`` ranks
    scores with ``torch.topk``, so a tie counts as correct when ``topk``
    happens to put the true class first (constant scores give the share of
    the lowest class index, not 0), and a NaN true score can count as
    correct. Here scores are ranked by :func:`tie_aware_topk_accuracy`;
    arguments, metric names (``accuracy/top1``, ...) and label predictions
    ``(N, )`` are mmpretrain's.
    """

    @staticmethod
    def calculate(
        pred: Union[torch.Tensor, np.ndarray, Sequence],
        target: Union[torch.Tensor, np.ndarray, Sequence],
        topk: Sequence[int] = (1, ),
        thrs: Sequence[Union[float, None]] = (0., ),
    ) -> Union[torch.Tensor, List[List[torch.Tensor]]]:
        """Accuracy of labels ``(N, )`` (as mmpretrain) or scores ``(N, C)``.

        Raises:
            ValueError: ``max(topk)`` exceeds the number of classes (as
                mmpretrain).
        """
        scores = to_tensor(pred)
        if scores.ndim == 1 or max(topk) > scores.size(1):
            return Accuracy.calculate(pred, target, topk, thrs)
        target = to_tensor(target)
        assert scores.size(0) == target.size(0), \
            f"The size of pred ({scores.size(0)}) doesn't match " \
            f'the target ({target.size(0)}).'
        return tie_aware_topk_accuracy(scores, target, topk, thrs)
