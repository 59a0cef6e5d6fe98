"""Image-text retrieval recall against a hand-built case."""
import pytest
import torch

from m3i_mm.evaluation.metrics import ImageTextRetrieval


def test_recall_on_a_hand_built_case():
    # Images and texts on unit axes: image 0 -> text 0 best (correct),
    # image 1 -> text 2 best, text 1 second; image 2 -> text 2 best.
    texts = torch.eye(3)
    images = torch.tensor([[1.0, 0.1, 0.0],
                           [0.0, 0.5, 1.0],
                           [0.0, 0.0, 1.0]])
    metric = ImageTextRetrieval(topk=(1, 2))
    metric.process(None, [
        dict(image_embedding=i, text_embedding=t)
        for i, t in zip(images, texts)
    ])
    out = metric.compute_metrics(metric.results)
    assert out['i2t_R@1'] == pytest.approx(200 / 3)  # images 0 and 2
    assert out['i2t_R@2'] == pytest.approx(100.0)
    # After normalisation every text's own image scores highest
    # (text 2: image 2 at 1.0 vs image 1 at 0.894).
    assert out['t2i_R@1'] == pytest.approx(100.0)
    # App. B.4's Flickr30K number is the mean of the two directions.
    assert out['mean_R@1'] == pytest.approx((200 / 3 + 100.0) / 2)
    assert out['mean_R@2'] == pytest.approx(100.0)


def test_missing_embeddings_are_named():
    metric = ImageTextRetrieval()
    with pytest.raises(KeyError, match='text_embedding'):
        metric.process(None, [dict(image_embedding=torch.ones(2))])


def recall(images, texts, topk):
    metric = ImageTextRetrieval(topk=topk)
    metric.process(None, [
        dict(image_embedding=i, text_embedding=t)
        for i, t in zip(images, texts)
    ])
    return metric.compute_metrics(metric.results)


def test_constant_scores_rank_pessimistically():
    """All four images equal and all texts equal: every candidate ties with
    the true pair, whose pessimistic rank is 3 (was 0: R@1 = 100)."""
    out = recall(torch.ones(4, 3), torch.ones(4, 3), (1, 3, 4, 10))
    for name in ('i2t', 't2i'):
        assert out[f'{name}_R@1'] == 0.0
        assert out[f'{name}_R@3'] == 0.0
        assert out[f'{name}_R@4'] == 100.0
        assert out[f'{name}_R@10'] == 100.0


def test_zero_embeddings_tie_with_everything():
    out = recall(torch.zeros(2, 3), torch.eye(3)[:2], (1, 2))
    assert out == {'i2t_R@1': 0.0, 'i2t_R@2': 100.0,
                   't2i_R@1': 0.0, 't2i_R@2': 100.0,
                   'mean_R@1': 0.0, 'mean_R@2': 100.0}


def test_partial_tie():
    # image 0 scores texts 0 and 1 equally (tie: rank 1), image 1 prefers
    # text 1 (rank 0), image 2 prefers text 2 (rank 0).
    texts = torch.eye(3)
    images = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0],
                           [0.0, 0.0, 1.0]])
    out = recall(images, texts, (1, 2))
    assert out['i2t_R@1'] == pytest.approx(200 / 3)
    assert out['i2t_R@2'] == 100.0
    # text 1: image 1 at 1.0 > image 0 at 0.707; text 0: image 0 alone
    assert out['t2i_R@1'] == 100.0


def test_single_pair():
    assert recall(torch.ones(1, 2), -torch.ones(1, 2), (1, 5)) == {
        'i2t_R@1': 100.0, 'i2t_R@5': 100.0,
        't2i_R@1': 100.0, 't2i_R@5': 100.0,
        'mean_R@1': 100.0, 'mean_R@5': 100.0}


def test_no_samples_and_non_finite_are_named():
    metric = ImageTextRetrieval()
    with pytest.raises(ValueError, match='no samples'):
        metric.compute_metrics([])
    with pytest.raises(ValueError, match=r'image_embedding of sample a\.jpg'):
        metric.process(None, [
            dict(image_embedding=torch.tensor([0., float('nan')]),
                 text_embedding=torch.ones(2),
                 img_path='a.jpg')
        ])
