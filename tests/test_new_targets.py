"""data2vec's top-K target, Barlow Twins' posterior and the discrete-token
target (issue 21, item 8), against hand-written forms."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.runner.checkpoint import save_checkpoint
from mmpretrain.registry import MODELS

import m3i_mm  # noqa: F401

ARCH = dict(embed_dims=32, num_layers=4, num_heads=4, feedforward_channels=64)


def test_data2vec_target_is_mean_of_instance_normed_top_blocks():
    torch.manual_seed(0)
    vit = MODELS.build(dict(type='VisionTransformer', arch=ARCH, img_size=16,
                            patch_size=4, out_type='featmap'))
    target = MODELS.build(dict(type='MomentumImageTarget', backbone=vit,
                               average_top_k=2))
    blocks = []
    for layer in target.ema.module.layers:
        layer.register_forward_hook(lambda m, i, o: blocks.append(o))
    images = torch.randn(3, 3, 16, 16)
    out = target(images)
    assert out.shape == (3, 16, 32)  # (N, L = 4x4 patches, C)
    top = [b[:, 1:] for b in blocks[-2:]]  # drop the class token

    def inorm(x):
        mu = x.mean(1, keepdim=True)
        var = x.var(1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(out, (inorm(top[0]) + inorm(top[1])) / 2)
    with pytest.raises(ValueError, match='average_top_k'):
        MODELS.build(dict(type='MomentumImageTarget', backbone=vit,
                          average_top_k=5))


def test_barlow_twins_posterior_matches_hand_written_loss():
    torch.manual_seed(0)
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    loss = MODELS.build(dict(type='BarlowTwinsPosterior', lambd=5e-3))(a, b)
    bn = torch.nn.BatchNorm1d(5, affine=False)
    c = bn(a).T @ bn(b) / 8
    on = ((torch.diagonal(c) - 1)**2).sum()
    off = (c**2).sum() - (torch.diagonal(c)**2).sum()
    torch.testing.assert_close(loss, on + 5e-3 * off)


TOKENIZER = dict(type='VQKD', num_embed=11, embed_dims=8,
                 quantize_kmeans_init=False,
                 encoder_config=dict(arch=ARCH, img_size=16, patch_size=4,
                                     out_type='featmap'))


def test_discrete_token_target_ids_and_codebook_loss(tmp_path):
    torch.manual_seed(0)
    tok = MODELS.build(TOKENIZER).eval()
    path = str(tmp_path / 'tok.pth')
    save_checkpoint(dict(state_dict=tok.state_dict()), path)
    target = MODELS.build(dict(type='DiscreteTokenTarget',
                               tokenizer=TOKENIZER, checkpoint=path))
    target.init_weights()
    images = torch.randn(2, 3, 16, 16)
    ids = target(images)
    assert ids.shape == (2, 16) and ids.dtype == torch.int64
    with torch.no_grad():  # nearest (cosine) codebook entry by hand
        feats = tok.encoder(images)[0].flatten(2).transpose(1, 2)
        z = F.normalize(tok.encode_task_layer(feats), dim=-1)
        code = tok.quantize.embedding.weight
        expected = torch.cdist(z, code[None].expand(2, -1, -1)).argmin(-1)
    assert torch.equal(ids, expected)
    logits = torch.randn(2, 16, 11)
    loss = MODELS.build(dict(type='CodebookBoltzmannPosterior'))(logits, ids)
    hand = -torch.log_softmax(logits, -1).gather(-1, ids[..., None]).mean()
    torch.testing.assert_close(loss, hand)
    bad = MODELS.build(dict(type='DiscreteTokenTarget', tokenizer=TOKENIZER,
                            checkpoint=str(tmp_path / 'none.pth')))
    with pytest.raises(FileNotFoundError, match='image_target.checkpoint'):
        bad.init_weights()
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    bad.checkpoint = str(tmp_path / 'junk.pth')
    with pytest.raises(ValueError, match='junk.pth'):
        bad.init_weights()
