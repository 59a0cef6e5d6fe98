"""M3I checkpoint -> timm / Hugging Face: real timm and transformers load the
export strictly and compute our backbone's features on real images.

Compared (fp32, max abs difference <= 1e-5): every output token after the
final norm, i.e. our ``VisionTransformer`` with ``out_type='raw'`` (class
token + patch tokens; the patch tokens are the ``featmap`` M3I trains on)
against timm's ``forward_features`` and transformers' ``last_hidden_state``;
and the class token (``out_type='cls_token'``) against timm's
``forward_head(pre_logits=True)`` and transformers' ``pooler_output``.
"""
import copy
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.runner import CheckpointLoader, save_checkpoint
from mmpretrain.registry import MODELS
from safetensors.torch import load_file
from transformers import ViTModel

from conftest import REPO, config_path, demo_loader_options, load_script

TOOL = osp.join(REPO, 'tools', 'model_converters', 'm3i_to_timm_hf.py')
conv = load_script('tools', 'model_converters', 'm3i_to_timm_hf.py')
DEMO = config_path('pretrain', 'm3i_vit-tiny_demo.py')
VITB = config_path('pretrain', 'm3i_vitb.py')
TOL = 1e-5


def save_like_runner(state_dict, cfg, path):
    """As ``Runner.save_checkpoint``: the config text in ``meta.cfg``."""
    save_checkpoint(dict(state_dict=state_dict,
                         meta=dict(cfg=cfg.pretty_text)), str(path))
    return str(path)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """The demo config's M3I (momentum encoder != online) and its file."""
    MessageHub.get_current_instance().update_info('max_iters', 10)
    torch.manual_seed(0)
    cfg = Config.fromfile(DEMO)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    model.image_target.update(model.backbone)  # first update copies
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.image_target.update(model.backbone)  # now an average
    path = save_like_runner(model.state_dict(), cfg,
                            tmp_path_factory.mktemp('demo') / 'iter_800.pth')
    return model, path


def digits(size):
    """Real scans: scikit-learn's digits, upsampled as the demo data set
    does, normalised as the demo's data preprocessor (127.5, 127.5)."""
    from sklearn.datasets import load_digits
    from m3i_mm.datasets.demo.digits import digit_image
    images = [np.asarray(digit_image(im, size).convert('RGB'), np.float32)
              for im in load_digits().images[:4]]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return (x - 127.5) / 127.5


def photos(size, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)):
    """Real RGB photos shipped with scikit-learn, normalised (ImageNet's
    mean and std by default)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    images = [np.asarray(Image.fromarray(im).resize((size, size),
                                                    Image.BICUBIC), np.float32)
              for im in load_sample_images().images]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / \
        torch.tensor(std).view(1, 3, 1, 1)


def ours(backbone, x):
    """(all tokens after the final norm, class token) of our backbone."""
    raw, cls = copy.deepcopy(backbone), copy.deepcopy(backbone)
    raw.out_type, cls.out_type = 'raw', 'cls_token'
    raw.eval(), cls.eval()  # mmpretrain's train() returns None
    with torch.no_grad():
        return raw(x)[-1], cls(x)[-1]


def timm_features(out_dir, x):
    """Load as the README says, strictly; (tokens, class token)."""
    args = json.load(open(osp.join(out_dir, 'config.json')))['model_args']
    model = timm.create_model(
        conv.TIMM_ARCH, pretrained=True, pretrained_cfg_overlay=dict(
            file=osp.join(out_dir, 'model.safetensors'), num_classes=0),
        **args).eval()
    # Independent of timm's loader: every key, nothing else.
    model.load_state_dict(load_file(osp.join(out_dir, 'model.safetensors')),
                          strict=True)
    with torch.no_grad():
        tokens = model.forward_features(x)
        return tokens, model.forward_head(tokens, pre_logits=True)


def hf_features(out_dir, x):
    model, info = ViTModel.from_pretrained(out_dir, output_loading_info=True)
    assert info == dict(missing_keys=[], unexpected_keys=[],
                        mismatched_keys=[], error_msgs=[]), info
    with torch.no_grad():
        out = model.eval()(pixel_values=x)
    return out.last_hidden_state, out.pooler_output


FEATURES = dict(timm=timm_features, hf=hf_features)


def assert_same(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert (g - w).abs().max().item() <= TOL, (g - w).abs().max()


@pytest.mark.parametrize('fmt', ['timm', 'hf'])
@pytest.mark.parametrize('encoder', ['online', 'momentum'])
def test_demo_vit_exports_with_same_features(demo, tmp_path, fmt, encoder):
    model, path = demo
    backbone = model.backbone if encoder == 'online' else \
        model.image_target.ema.module
    conv.main([path, str(tmp_path), '--format', fmt,
               *(['--momentum'] if encoder == 'momentum' else [])])
    x = digits(32)
    want = ours(backbone, x)
    assert_same(FEATURES[fmt](str(tmp_path), x), want)
    # The two encoders differ: the comparison can tell them apart.
    other = model.image_target.ema.module if encoder == 'online' else \
        model.backbone
    assert (ours(other, x)[0] - want[0]).abs().max() > 1e-2


@pytest.mark.parametrize('fmt', ['timm', 'hf'])
def test_img_size_resizes_pos_embed_as_our_backbone_does(demo, tmp_path, fmt):
    """Our backbone on 48x48 inputs resizes its 8x8 position grid to 12x12
    at run time; the export holds that grid."""
    model, path = demo
    conv.main([path, str(tmp_path), '--format', fmt, '--img-size', '48'])
    x = digits(48)
    assert_same(FEATURES[fmt](str(tmp_path), x), ours(model.backbone, x))


def test_checkpoint_of_a_real_training_run(zygote, demo_root, tmp_path):
    """``tools/train.py`` on the demo (one iteration): the runner's own
    ``meta.cfg`` describes the backbone; its weights load in both."""
    work = tmp_path / 'work'
    status, log = zygote.run([
        DEMO, '--work-dir', str(work), '--no-validate', '--cfg-options',
        *demo_loader_options(demo_root, ('train_dataloader',)),
        'train_dataloader.batch_size=4', 'train_cfg.max_iters=1'
    ], tmp_path / 'log.txt')
    assert status == 0, log[-2000:]
    path = str(work / 'iter_1.pth')
    backbone = MODELS.build(Config.fromfile(DEMO).model.backbone)
    state = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    backbone.load_state_dict(conv.convert(state, prefix=''), strict=True)
    x = digits(32)
    for fmt in FEATURES:
        conv.main([path, str(tmp_path / fmt), '--format', fmt])
        assert_same(FEATURES[fmt](str(tmp_path / fmt), x), ours(backbone, x))


@pytest.mark.parametrize('fmt', ['timm', 'hf'])
def test_bgr_trained_backbone_takes_rgb(demo, tmp_path, fmt):
    """The demo config keeps mmcv's BGR order (``to_rgb=False``): our
    backbone on BGR photos = the export on the same photos in RGB."""
    model, path = demo
    conv.main([path, str(tmp_path), '--format', fmt])
    rgb = photos(32, mean=(127.5,) * 3, std=(127.5,) * 3)
    assert (rgb - rgb.flip(1)).abs().max() > 0.5  # colour photos
    assert_same(FEATURES[fmt](str(tmp_path), rgb),
                ours(model.backbone, rgb.flip(1)))


@pytest.fixture(scope='module')
def vitb(tmp_path_factory):
    """The ViT-B config's backbone (random init) in a runner-style file."""
    torch.manual_seed(0)
    cfg = Config.fromfile(VITB)
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    backbone.eval()
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    path = save_like_runner(state, cfg,
                            tmp_path_factory.mktemp('vitb') / 'epoch_1.pth')
    return backbone, path


@pytest.mark.parametrize('fmt', ['timm', 'hf'])
def test_vitb_exports_with_same_features(vitb, tmp_path, fmt):
    backbone, path = vitb
    conv.main([path, str(tmp_path), '--format', fmt])
    x = photos(224)
    assert_same(FEATURES[fmt](str(tmp_path), x), ours(backbone, x))


def test_timm_local_dir_and_hf_preprocessor_configs(demo, tmp_path):
    """``local-dir:`` reads config.json's model_args and mean/std."""
    model, path = demo
    conv.main([path, str(tmp_path / 'timm'), '--format', 'timm'])
    loaded = timm.create_model(f'local-dir:{tmp_path / "timm"}',
                               pretrained=True).eval()
    assert tuple(loaded.pretrained_cfg['mean']) == (0.5, 0.5, 0.5)
    x = digits(32)
    with torch.no_grad():
        assert_same([loaded.forward_features(x)], ours(model.backbone, x))
    conv.main([path, str(tmp_path / 'hf'), '--format', 'hf'])
    pre = json.load(open(tmp_path / 'hf' / 'preprocessor_config.json'))
    assert pre['image_mean'] == [0.5] * 3
    assert pre['size'] == dict(height=32, width=32)


@pytest.fixture(scope='module')
def layer_scale(tmp_path_factory):
    """A demo ViT with layer scale (mmpretrain ``attn.gamma1``)."""
    torch.manual_seed(0)
    cfg = Config.fromfile(DEMO)
    cfg.model.backbone.layer_scale_init_value = 0.1
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    backbone.eval()
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    return backbone, save_like_runner(
        state, cfg, tmp_path_factory.mktemp('ls') / 'ls.pth')


def test_layer_scale_goes_to_timm(layer_scale, tmp_path):
    backbone, path = layer_scale
    conv.main([path, str(tmp_path), '--format', 'timm'])
    x = digits(32)
    assert_same(timm_features(str(tmp_path), x), ours(backbone, x))


def test_refusals_name_the_file_and_key(layer_scale, tmp_path):
    """The command line: exit 1 with the file and the offending key."""
    _, path = layer_scale
    run = subprocess.run(
        [sys.executable, TOOL, path, str(tmp_path / 'hf'), '--format', 'hf'],
        capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert f'{path}: ExportError: "backbone.layers.0.attn.gamma1.weight": ' \
        "layer scale: transformers' ViTModel has none" in run.stderr
    assert not (tmp_path / 'hf' / 'model.safetensors').exists()

    bare = str(tmp_path / 'bare.pth')
    save_checkpoint(dict(state_dict={'backbone.cls_token': torch.zeros(
        1, 1, 64)}), bare)
    with pytest.raises(SystemExit, match=f'{bare}: ExportError: {bare} has '
                       'no meta.cfg .* pass --config'):
        conv.main([bare, str(tmp_path / 'x'), '--format', 'timm'])
    with pytest.raises(SystemExit, match=r'"backbone\.layers\.\S+" of the '
                       'configured backbone is missing from the checkpoint'):
        conv.main([bare, str(tmp_path / 'x'), '--format', 'timm',
                   '--config', DEMO])
    with pytest.raises(SystemExit, match="model.backbone.type='InternImage': "
                       "only mmpretrain's VisionTransformer exports"):
        conv.main([path, str(tmp_path / 'x'), '--format', 'timm', '--config',
                   config_path('pretrain', 'm3i_internimage-h.py')])
