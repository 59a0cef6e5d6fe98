"""FederatedSigmoidLoss against hand-computed values and its sampling law."""
import json
import math

import pytest
import torch

from m3i_mm.models.losses import FederatedSigmoidLoss


def bce(logit, target):
    return -(target * math.log(1 / (1 + math.exp(-logit))) +
             (1 - target) * math.log(1 - 1 / (1 + math.exp(-logit))))


def test_all_classes_chosen_equals_sigmoid_cross_entropy():
    # 3 foreground classes, num_fed_classes above C + 1: every class with a
    # positive weight is used, so the loss is the plain per-class BCE.
    loss_fn = FederatedSigmoidLoss(
        num_classes=3, class_image_counts=[9, 4, 1], num_fed_classes=10)
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    labels = torch.tensor([0, 3])  # class 0, background
    expected = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 0) + bce(0.0, 0) +
                bce(1.0, 0) + bce(-2.0, 0)) / 2
    assert loss_fn(logits, labels).item() == pytest.approx(expected)
    per_roi = loss_fn(logits, labels, reduction_override='none')
    assert per_roi.shape == (2, )
    assert per_roi[1].item() == pytest.approx(
        bce(0.0, 0) + bce(1.0, 0) + bce(-2.0, 0))
    weighted = loss_fn(
        logits, labels, label_weights=torch.tensor([1.0, 0.0]), avg_factor=4)
    assert weighted.item() == pytest.approx(per_roi[0].item() / 4)


def test_unchosen_classes_get_no_gradient():
    torch.manual_seed(0)
    # Counts 0 are never sampled: with classes 0 and background present
    # and room for 2 negatives, they must be classes 1 and 2.
    loss_fn = FederatedSigmoidLoss(
        num_classes=5, class_image_counts=[5, 5, 5, 0, 0], num_fed_classes=4)
    logits = torch.randn(6, 5, requires_grad=True)
    labels = torch.tensor([0, 0, 5, 5, 5, 5])
    loss_fn(logits, labels).backward()
    used = (logits.grad.abs().sum(0) > 0).tolist()
    assert used == [True, True, True, False, False]


def test_negative_classes_follow_sqrt_image_counts():
    torch.manual_seed(0)
    counts = [100, 400, 25, 1]
    loss_fn = FederatedSigmoidLoss(
        num_classes=4, class_image_counts=counts, num_fed_classes=2)
    labels = torch.tensor([4, 4])  # background only: one negative drawn
    draws = torch.stack(
        [loss_fn.sample_classes(labels) for _ in range(4000)])
    assert (draws.sum(1) == 1).all()
    weights = torch.tensor(counts, dtype=torch.float).sqrt()
    torch.testing.assert_close(
        draws.mean(0), weights / weights.sum(), atol=0.03, rtol=0)
    # Ground-truth classes are always in, never sampled twice.
    labels = torch.tensor([1, 2, 4])
    for _ in range(50):
        chosen = loss_fn.sample_classes(labels)
        assert chosen[1] == 1 and chosen[2] == 1 and chosen.sum() == 2


def test_head_interface():
    loss_fn = FederatedSigmoidLoss(num_classes=3, class_image_counts=[1] * 3)
    assert loss_fn.custom_cls_channels and loss_fn.custom_activation
    assert loss_fn.get_cls_channels(3) == 3
    logits = torch.tensor([[3.0, -3.0, 0.0], [-4.0, -4.0, -4.0]])
    scores = loss_fn.get_activation(logits)
    assert scores.shape == (2, 4)
    torch.testing.assert_close(scores[:, :3], logits.sigmoid())
    torch.testing.assert_close(scores[:, 3], 1 - logits.sigmoid().amax(1))
    # Row 0 predicts class 0, row 1 background (no class above 0.5).
    acc = loss_fn.get_accuracy(logits, torch.tensor([0, 3]))['acc']
    assert acc.item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match='num_classes=3, the head 4'):
        loss_fn.get_cls_channels(4)


def test_counts_from_an_lvis_file_and_bad_input(tmp_path):
    ann = tmp_path / 'lvis.json'
    ann.write_text(json.dumps(dict(categories=[
        dict(id=1, image_count=16), dict(id=2, image_count=4)])))
    loss_fn = FederatedSigmoidLoss(num_classes=2, ann_file=str(ann))
    torch.testing.assert_close(loss_fn.class_weights, torch.tensor([4., 2.]))
    # Read on first use (training), so testing needs no train json.
    lazy = FederatedSigmoidLoss(num_classes=3, ann_file=str(ann))
    with pytest.raises(ValueError, match='2 class image counts in .*lvis'):
        lazy(torch.zeros(1, 3), torch.tensor([3]))
    assert FederatedSigmoidLoss(
        num_classes=3, ann_file=str(tmp_path / 'absent.json')).num_classes
    with pytest.raises(ValueError, match='exactly one'):
        FederatedSigmoidLoss(num_classes=2)
    bad = tmp_path / 'coco.json'
    bad.write_text(json.dumps(dict(categories=[dict(id=7)])))
    with pytest.raises(ValueError, match=r'coco.json: categories \[7\]'):
        FederatedSigmoidLoss(num_classes=1, ann_file=str(bad)).class_weights
    with pytest.raises(ValueError, match='channels'):
        FederatedSigmoidLoss(num_classes=2, class_image_counts=[1, 1])(
            torch.zeros(1, 3), torch.tensor([0]))
