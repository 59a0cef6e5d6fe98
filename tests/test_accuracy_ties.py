"""Top-k accuracy (zero-shot and supervised evaluation of our configs:
``TieAwareAccuracy`` on ``pred_score``) on degenerate inputs, hand-computed.

Ties are pessimistic (see ``m3i_mm.evaluation.TieAwareAccuracy``);
mmpretrain's own ``Accuracy`` stays upstream's after ``import m3i_mm``.
"""
import inspect

import pytest
import torch
from mmengine.registry import DefaultScope
from mmpretrain.evaluation.metrics import Accuracy
from mmpretrain.registry import METRICS
from mmpretrain.structures import DataSample

from m3i_mm.evaluation import TieAwareAccuracy


def accuracy(scores, labels, topk=(1, ), thrs=(0., ), metric=None):
    """Through ``process`` + ``compute_metrics``, as the Runner calls it."""
    if metric is None:
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            metric = METRICS.build(
                dict(type='TieAwareAccuracy', topk=topk, thrs=thrs))
    samples = [
        DataSample().set_pred_score(torch.tensor(s)).set_gt_label(label)
        for s, label in zip(scores, labels)
    ]
    metric.process(None, [s.to_dict() for s in samples])
    return metric.compute_metrics(metric.results)


def test_constant_scores_are_wrong_until_k_covers_every_class():
    """4 samples, 3 classes (class 2 has no sample), every score 1/3: each
    true class ties with the 2 others (rank 2). Upstream counted the 2
    samples of class 0 as right at top-1 (50 %)."""
    out = accuracy([[1 / 3] * 3] * 4, [0, 0, 1, 1], topk=(1, 2, 3))
    assert out == {'top1': 0.0, 'top2': 0.0,
                   'top3': 100.0}


def test_partial_tie_and_single_sample():
    # sample 0: class 0 ties with class 1 (rank 1; upstream's topk put
    # class 0 first: right); sample 1: clear (rank 0)
    out = accuracy([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]], [0, 2], topk=(1, 2))
    assert out == {'top1': 50.0, 'top2': 100.0}
    assert accuracy([[0.2, 0.7, 0.1]], [1]) == {'top1': 100.0}
    assert accuracy([[0.2, 0.7, 0.1]], [0]) == {'top1': 0.0}


def test_threshold_and_nan():
    # true scores 0.5 and 0.4, both rank 0; thr 0.45 keeps only the first
    out = accuracy([[0.5, 0.3, 0.2], [0.4, 0.3, 0.3]], [0, 0],
                   thrs=(0.45, ))
    assert out == {'top1': 50.0}
    # NaN true score: wrong; a NaN rival ranks above the true class
    out = accuracy([[float('nan'), 0.1, 0.2], [0.9, float('nan'), 0.1]],
                   [0, 0], topk=(1, 2))
    assert out == {'top1': 0.0, 'top2': 50.0}
    # without a threshold upstream counted a NaN true score as right
    out = accuracy([[float('nan'), 0.1, 0.2]], [0], thrs=(None, ))
    assert out == {'top1': 0.0}


def test_no_ties_equal_upstream():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 7, generator=gen)
    labels = torch.randint(0, 7, (50, ), generator=gen)
    top = scores.topk(3, dim=1).indices
    want = [100.0 * (top[:, :k] == labels[:, None]).any(1).float().mean()
            for k in (1, 3)]
    for calculate in (TieAwareAccuracy.calculate, Accuracy.calculate):
        got = calculate(scores, labels, topk=(1, 3), thrs=(None, ))
        assert [float(r[0]) for r in got] == pytest.approx(
            [float(w) for w in want])
    with pytest.raises(ValueError, match='Top-8 accuracy is unavailable'):
        TieAwareAccuracy.calculate(scores, labels, topk=(8, ))
    # label predictions: mmpretrain's top-1
    assert float(TieAwareAccuracy.calculate([0, 2, 1], [0, 1, 1])) == \
        pytest.approx(200 / 3)


def test_mmpretrain_accuracy_is_untouched():
    """``import m3i_mm`` leaves mmpretrain's ``Accuracy`` as upstream wrote
    it: its ``topk`` puts tied class 0 first (50 % on the constant scores
    above), and the registry's ``Accuracy`` is that class."""
    assert Accuracy.calculate.__code__.co_filename == \
        inspect.getfile(Accuracy)
    assert METRICS.get('Accuracy') is Accuracy
    out = accuracy([[1 / 3] * 3] * 4, [0, 0, 1, 1], topk=(1, 3),
                   metric=Accuracy(topk=(1, 3)))
    assert out == {'top1': 50.0, 'top3': 100.0}
