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


def test_missing_embeddings_are_named():
    metric = ImageTextRetrieval()
    with pytest.raises(KeyError, match='text_embedding'):
        metric.process(None, [dict(image_embedding=torch.ones(2))])
