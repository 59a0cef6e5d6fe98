"""SiameseIM's choices in M3I: relative-scale queries, one decoder per image
target (optional), masked tokens dropped from the encoder."""
import copy
import math

import pytest
import torch
from mmengine.logging import MessageHub
from mmpretrain.registry import MODELS

from m3i_mm.models.target_encoders import backbone_tokens
from m3i_mm.models.utils import mix_images, vit_visible_tokens

from conftest import TINY_ARCH, TINY_DIMS, TINY_PATCH, TINY_SIZE, tiny_m3i
from test_m3i_model import make_batch

GRID = TINY_SIZE // TINY_PATCH


@pytest.fixture(autouse=True)
def max_iters():
    MessageHub.get_current_instance().update_info('max_iters', 100)


def decoder(**kwargs):
    torch.manual_seed(0)
    return MODELS.build(
        dict(type='ImageTargetDecoder', in_channels=8, out_channels=8,
             embed_dims=16, depth=1, num_heads=4, **kwargs)).eval()


def decoder_inputs():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5, 8, generator=gen)
    token_pos = torch.rand(2, 5, 2, generator=gen) * 4
    query_pos = torch.rand(2, 3, 2, generator=gen) * 4
    return tokens, token_pos, query_pos


def test_decoder_queries_embed_relative_scale_by_default():
    dec = decoder()
    assert dec.query_embed.in_features == 2 * 16
    tokens, token_pos, query_pos = decoder_inputs()
    same = dec(tokens, token_pos, query_pos, query_scale=torch.zeros(2, 2))
    zoomed = dec(tokens, token_pos, query_pos,
                 query_scale=torch.full((2, 2), math.log(0.5)))
    assert not torch.allclose(same, zoomed, atol=1e-4)
    with pytest.raises(ValueError, match='query_scale'):
        dec(tokens, token_pos, query_pos)


def test_decoder_scale_switch_off_is_position_only():
    dec = decoder(relative_scale=False)
    assert dec.query_embed is None
    assert not any('query_embed' in k for k in dec.state_dict())
    tokens, token_pos, query_pos = decoder_inputs()
    plain = dec(tokens, token_pos, query_pos)
    ignored = dec(tokens, token_pos, query_pos,
                  query_scale=torch.full((2, 2), math.log(0.5)))
    assert torch.equal(plain, ignored)


def test_m3i_passes_hand_computed_scales_to_the_decoder():
    """make_batch: target view (0, 0, 32, 32), other view (4, 2, 28, 30),
    odd samples with a flipped other view. The 'same' target has scale 0,
    the 'different' one log(32/24), log(32/28), flips or not."""
    model = tiny_m3i(category_head=None, category_embedding=None,
                     loss_balancer=None)
    seen = []
    forward = model.image_decoder.forward

    def spy(tokens, token_pos, query_pos, query_scale=None):
        seen.append(query_scale)
        return forward(tokens, token_pos, query_pos, query_scale=query_scale)

    model.image_decoder.forward = spy
    views, samples = make_batch()
    model.loss(views, samples)
    first, second = seen
    assert first.tolist() == [[0., 0.]] * 4
    assert torch.allclose(
        second, torch.tensor([[math.log(32 / 24), math.log(32 / 28)]] * 4))


def test_separate_image_decoders_are_a_config_choice():
    views, samples = make_batch()
    shared = tiny_m3i()
    assert shared.image_decoder_second is None
    assert not any(k.startswith('image_decoder_second')
                   for k in shared.state_dict())
    model = tiny_m3i(separate_image_decoders=True)
    losses = model.loss(views, samples)
    losses['loss_img_first'].backward()
    # The first target's loss reaches only the first decoder.
    assert model.image_decoder.predictor.weight.grad.abs().sum() > 0
    assert model.image_decoder_second.predictor.weight.grad is None
    model.zero_grad()
    model.loss(views, samples)['loss_img_second'].backward()
    assert model.image_decoder.predictor.weight.grad is None
    assert model.image_decoder_second.predictor.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='separate_image_decoders'):
        tiny_m3i(separate_image_decoders=True,
                 mixer=dict(type='MultiInputMixer', patch_size=TINY_PATCH,
                            mode='mask'))


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    vit = MODELS.build(
        dict(type='VisionTransformer', arch=TINY_ARCH, img_size=TINY_SIZE,
             patch_size=TINY_PATCH, out_type='featmap', **kwargs))
    vit.init_weights()
    vit.eval()  # mmpretrain backbones' train() returns None
    return vit


def keep_and_mask(n=2, visible=9):
    gen = torch.Generator().manual_seed(1)
    keep = torch.stack([
        torch.randperm(GRID * GRID, generator=gen)[:visible].sort().values
        for _ in range(n)
    ])
    mask = torch.ones(n, GRID * GRID, dtype=torch.bool)
    mask.scatter_(1, keep, False)
    return keep, mask.view(n, GRID, GRID)


def patches_of(images, keep):
    """(N, C, p, K*p): the kept patches side by side, a 1 x K strip."""
    p = TINY_PATCH
    n, c = images.shape[:2]
    grid = images.unfold(2, p, p).unfold(3, p, p)  # N, C, h, w, p, p
    grid = grid.reshape(n, c, GRID * GRID, p, p)
    kept = grid[torch.arange(n)[:, None], :, keep]  # N, K, C, p, p
    return kept.permute(0, 2, 3, 1, 4).reshape(n, c, p, -1)


@torch.no_grad()
def test_dropped_tokens_equal_a_vit_on_the_visible_patches_only():
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    keep, mask = keep_and_mask()
    vit = tiny_vit()
    # All patches kept: the ViT's own output.
    everything = torch.arange(GRID * GRID).expand(2, -1)
    assert torch.allclose(vit_visible_tokens(vit, images, everything),
                          backbone_tokens(vit, images), atol=1e-5)
    # Without position embeddings a ViT is blind to where a patch is, so
    # running it on a 1 x K strip of the visible patches is running it on
    # only those tokens.
    vit.pos_embed.zero_()
    strip = backbone_tokens(vit, patches_of(images, keep))
    dropped = vit_visible_tokens(vit, images, keep)
    assert torch.allclose(dropped, strip, atol=1e-5)
    filled = mix_images(images, torch.zeros_like(images), mask,
                        torch.arange(2), TINY_PATCH)
    zero_filled = torch.gather(backbone_tokens(vit, filled), 1,
                               keep[..., None].expand(-1, -1, TINY_DIMS))
    assert (zero_filled - dropped).abs().max() > 1e-2


@torch.no_grad()
def test_dropped_tokens_ignore_the_masked_pixels():
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    keep, mask = keep_and_mask()
    vit = tiny_vit()
    noise = mix_images(images, torch.randn_like(images), mask,
                       torch.arange(2), TINY_PATCH)
    assert torch.allclose(vit_visible_tokens(vit, images, keep),
                          vit_visible_tokens(vit, noise, keep), atol=1e-6)
    with pytest.raises(ValueError, match='keep_idx'):
        vit_visible_tokens(vit, images, keep + GRID * GRID)
    with pytest.raises(ValueError, match='mask grid'):
        vit_visible_tokens(vit, images, keep, grid=(2 * GRID, 2 * GRID))


def test_wo_mix_trains_with_dropped_tokens():
    views, samples = make_batch()
    wo_mix = dict(type='MultiInputMixer', patch_size=TINY_PATCH, mode='mask',
                  target_views=('different', 'different'))
    fill = tiny_m3i(mixer=wo_mix)
    drop = tiny_m3i(mixer=dict(wo_mix, drop_masked=True))
    drop.load_state_dict(fill.state_dict())
    drop.loss_balancer = copy.deepcopy(fill.loss_balancer)
    torch.manual_seed(0)
    dropped = drop.loss(views, samples)
    torch.manual_seed(0)
    filled = fill.loss(views, samples)
    assert set(dropped) == set(filled)
    assert abs(dropped['loss_img_first'] - filled['loss_img_first']) > 1e-4
    opt = torch.optim.SGD(drop.parameters(), lr=0.1)
    sum(v for k, v in dropped.items() if k.startswith('loss')).backward()
    assert drop.backbone.patch_embed.projection.weight.grad.abs().sum() > 0
    opt.step()
    with pytest.raises(ValueError, match='drop_masked'):
        MODELS.build(dict(wo_mix, mode='mix', drop_masked=True))
    internimage_like = tiny_m3i(mixer=dict(wo_mix, drop_masked=True))
    internimage_like.backbone = torch.nn.Conv2d(3, TINY_DIMS, TINY_PATCH,
                                                TINY_PATCH)
    with pytest.raises(TypeError, match='VisionTransformer'):
        internimage_like.loss(views, samples)


def test_wo_mix_with_dropped_tokens_under_autocast():
    views, samples = make_batch()
    model = tiny_m3i(mixer=dict(
        type='MultiInputMixer', patch_size=TINY_PATCH, mode='mask',
        target_views=('different', 'different'), drop_masked=True))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model.loss(views, samples)
    total = sum(v for k, v in losses.items() if k.startswith('loss'))
    assert torch.isfinite(total)
    total.backward()
    assert model.image_decoder.query_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('options', [
    dict(mixer=dict(mode='mask', target_views=('different', 'different'),
                    drop_masked=True)),
    dict(separate_image_decoders=True),
], ids=['wo-mix-dropped-tokens', 'separate-decoders'])
def test_demo_trains_through_the_runner(demo_root, tmp_path, options):
    from mmengine.config import Config
    from mmengine.registry import RUNNERS

    from conftest import config_path
    cfg = Config.fromfile(config_path('pretrain', 'm3i_vit-tiny_demo.py'))
    cfg.merge_from_dict(dict(model=options))
    cfg.work_dir = str(tmp_path)
    cfg.train_dataloader.dataset.data_root = demo_root
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.train_dataloader.batch_size = 8
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2)
    cfg.default_hooks.checkpoint = dict(
        type='DurableCheckpointHook', by_epoch=False, interval=2)
    cfg.log_level = 'WARNING'
    runner = RUNNERS.build(cfg)
    runner.train()
    state = torch.load(tmp_path / 'iter_2.pth', map_location='cpu',
                       weights_only=True)['state_dict']
    assert 'image_decoder.query_embed.weight' in state
    assert ('image_decoder_second.query_embed.weight' in state) == (
        'separate_image_decoders' in options)


@torch.no_grad()
def test_predict_with_the_pretrained_category_head():
    """Table 4, "ImageNet w/o Fine-tuning": the category head's prediction
    scored against the category embeddings (weight and bias)."""
    from mmpretrain.evaluation import Accuracy
    model = tiny_m3i()
    model.eval()
    views, samples = make_batch()
    out = model(views[0], samples, mode='predict')
    pooled = model.category_head(backbone_tokens(model.backbone, views[0]))
    logits = pooled @ model.category_embedding.weight.t() + \
        model.category_embedding.bias
    scores = torch.stack([s.pred_score for s in out])
    assert torch.allclose(scores, logits.softmax(-1), atol=1e-6)
    # Category embeddings = the images' normalised predictions, classes 0
    # and 1 swapped: by Cauchy-Schwarz each image picks its own row.
    unit = torch.nn.functional.normalize(pooled, dim=-1)
    model.category_embedding.weight.copy_(
        torch.cat([unit[[1, 0, 2, 3]], -unit[:1]]))
    model.category_embedding.bias.zero_()
    out = model(views[0], samples, mode='predict')
    assert [int(s.pred_label) for s in out] == [1, 0, 2, 3]
    metric = Accuracy()  # labels 0, 1, 2, 3
    metric.process(None, [s.to_dict() for s in out])
    assert metric.compute_metrics(metric.results)['top1'] == 50.0


def test_decorrelation_term_makes_collapsed_targets_cost():
    """Identical targets for every image are free for plain MSE and cost
    ``w * D`` with UniGrad's term (C = z zᵀ, ẑ = z: (zᵀz)² / D = D)."""
    from m3i_mm.models.losses import GaussianPosterior
    d = 8
    z = torch.nn.functional.layer_norm(torch.randn(d), (d, ))
    target = z.expand(6, 5, d)
    pred = target.clone().requires_grad_()
    assert float(GaussianPosterior()(pred.detach(), target)) == \
        pytest.approx(0, abs=1e-6)
    loss = GaussianPosterior(decorrelation_weight=0.02)(pred, target)
    assert loss.item() == pytest.approx(0.02 * d, rel=1e-4)
    loss.backward()  # pushes the prediction off the shared direction
    assert float((pred.grad * z).sum()) > 0
    # Whitened targets (C = I): the term is w * mean ||ẑ||² / D.
    eye = torch.eye(d).repeat(3, 1) * d**0.5
    p = torch.randn(3 * d, d)
    want = torch.nn.functional.mse_loss(p, eye) + 0.5 * (p**2).sum(-1).mean() / d
    got = GaussianPosterior(normalize_target=False,
                            decorrelation_weight=0.5)(p, eye)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ValueError, match='decorrelation_weight'):
        GaussianPosterior(decorrelation_weight=-1)
