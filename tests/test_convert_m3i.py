"""M3I checkpoint -> downstream backbone: round trips through real loaders."""
import os

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.runner import CheckpointLoader, load_checkpoint, save_checkpoint
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS

from conftest import TINY_ARCH as ARCH
from conftest import TINY_DIMS as DIMS
from conftest import TINY_HEADS as HEADS
from conftest import TINY_LAYERS as LAYERS
from conftest import TINY_PATCH as PATCH
from conftest import TINY_SIZE as SIZE
from conftest import load_script, tiny_m3i


conv = load_script('tools', 'model_converters', 'm3i_to_downstream.py')


@pytest.fixture(scope='module')
def m3i(tmp_path_factory):
    """A tiny M3I model whose momentum encoder differs from the online one,
    and its checkpoint on disk."""
    MessageHub.get_current_instance().update_info('max_iters', 10)
    torch.manual_seed(0)
    model = tiny_m3i().eval()
    model.image_target.update(model.backbone)  # first update copies
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.image_target.update(model.backbone)  # now an average
    path = str(tmp_path_factory.mktemp('m3i') / 'm3i.pth')
    save_checkpoint(dict(state_dict=model.state_dict(), meta=dict()), path)
    return model, path


def encoder_of(model, encoder):
    return model.backbone if encoder == 'online' else \
        model.image_target.ema.module


def converted_file(tmp_path, m3i_path, name='backbone.pth', **kwargs):
    state = conv.convert(
        CheckpointLoader.load_checkpoint(m3i_path, map_location='cpu'),
        **kwargs)
    out = str(tmp_path / name)
    save_checkpoint(dict(state_dict=state), out)
    return out, state


def rand_images(size, seed):
    return torch.randn(
        2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def featmap(backbone, x):
    backbone.eval()
    with torch.no_grad():
        return backbone(x)[-1]


@pytest.mark.parametrize('encoder', ['online', 'momentum'])
def test_mmpretrain_vit_via_pretrained_init_gives_same_features(
        m3i, tmp_path, encoder):
    model, path = m3i
    out, state = converted_file(tmp_path, path, encoder=encoder)
    assert all(k.startswith('backbone.') for k in state)
    assert not any('decoder' in k or 'ema' in k or 'category' in k
                   for k in state)
    vit = MODELS.build(
        dict(type='VisionTransformer', arch=ARCH, img_size=SIZE,
             patch_size=PATCH, out_type='featmap',
             init_cfg=dict(type='Pretrained', checkpoint=out,
                           prefix='backbone.')))
    vit.init_weights()
    x = rand_images(SIZE, 1)
    ref = featmap(encoder_of(model, encoder), x)
    other = featmap(encoder_of(
        model, 'momentum' if encoder == 'online' else 'online'), x)
    got = featmap(vit, x)
    assert got.shape == (2, DIMS, SIZE // PATCH, SIZE // PATCH)
    assert torch.equal(got, ref)
    assert (got - other).abs().max() > 1e-2  # the encoders really differ


def test_img_size_resizes_pos_embed_and_loads_strictly(m3i, tmp_path):
    model, path = m3i
    new = 24
    out, state = converted_file(tmp_path, path, img_size=new)
    pos = state['backbone.pos_embed']
    assert pos.shape == (1, (new // PATCH)**2 + 1, DIMS)
    expected = resize_pos_embed(model.backbone.pos_embed.detach(),
                                (SIZE // PATCH, ) * 2, (new // PATCH, ) * 2,
                                mode='bicubic', num_extra_tokens=1)
    assert torch.equal(pos, expected)
    assert torch.equal(pos[:, 0], model.backbone.pos_embed[:, 0].detach())
    vit = MODELS.build(
        dict(type='VisionTransformer', arch=ARCH, img_size=new,
             patch_size=PATCH, out_type='featmap'))
    load_checkpoint(vit, out, strict=True, revise_keys=[(r'^backbone\.', '')])
    # mmpretrain's ViT resizes its pos_embed the same way on the fly, so the
    # pre-trained model on a 24x24 input equals the converted one.
    x = rand_images(new, 2)
    diff = (featmap(vit, x) - featmap(model.backbone, x)).abs().max()
    assert diff < 1e-5
    with pytest.raises(ValueError, match='not divisible'):
        conv.convert(model.state_dict(), img_size=22)


def test_mmseg_vit_layout_gives_same_features(m3i, tmp_path):
    from mmseg.models.backbones import VisionTransformer as SegViT
    model, path = m3i
    out, state = converted_file(tmp_path, path, layout='mmseg')
    seg_vit = SegViT(
        img_size=SIZE, patch_size=PATCH, embed_dims=DIMS, num_layers=LAYERS,
        num_heads=HEADS, mlp_ratio=2, qkv_bias=True, patch_bias=True,
        norm_cfg=dict(type='LN', eps=1e-6), final_norm=True,
        init_cfg=dict(type='Pretrained', checkpoint=out))
    # Same key set, so it also loads strictly.
    assert set(state) == set(seg_vit.state_dict())
    seg_vit.init_weights()
    assert torch.equal(
        seg_vit.layers[1].attn.attn.in_proj_weight,
        model.backbone.layers[1].attn.qkv.weight.detach())
    x = rand_images(SIZE, 3)
    diff = (featmap(seg_vit, x) - featmap(model.backbone, x)).abs().max()
    assert diff < 1e-5  # torch's fused attention vs mmpretrain's


def test_beit_vit_with_zero_relative_tables_gives_same_features(
        m3i, tmp_path):
    """mmpretrain's BEiTViT (our ADE20k backbone) with the converted file:
    zero relative position tables leave the pre-trained function intact."""
    model, path = m3i
    new = 24
    grid = new // PATCH
    out, state = converted_file(
        tmp_path, path, img_size=new, rel_pos_heads=HEADS)
    table = state['backbone.layers.0.attn.relative_position_bias_table']
    assert table.shape == ((2 * grid - 1)**2 + 3, HEADS)
    assert not table.any()
    beit_cfg = dict(
        type='BEiTViT', arch=ARCH, img_size=new, patch_size=PATCH, bias=True,
        use_abs_pos_emb=True, use_rel_pos_bias=True,
        layer_scale_init_value=0.0, final_norm=True, out_type='featmap',
        init_cfg=dict(type='Pretrained', checkpoint=out, prefix='backbone.'))
    missing, unexpected = MODELS.build(beit_cfg).load_state_dict(
        {k[len('backbone.'):]: v for k, v in state.items()}, strict=False)
    assert unexpected == []
    assert sorted(missing) == [
        f'layers.{i}.attn.relative_position_index' for i in range(LAYERS)]
    beit = MODELS.build(beit_cfg)
    beit.init_weights()  # trunc-normal tables, then the file's zeros
    assert not beit.layers[1].attn.relative_position_bias_table.any()
    x = rand_images(new, 4)
    diff = (featmap(beit, x) - featmap(model.backbone, x)).abs().max()
    assert diff < 1e-5


def test_missing_encoder_prefix_is_named(tmp_path):
    MessageHub.get_current_instance().update_info('max_iters', 10)
    model = tiny_m3i(image_target=None, image_decoder=None).eval()
    path = str(tmp_path / 'no_target.pth')
    save_checkpoint(dict(state_dict=model.state_dict()), path)
    with pytest.raises(KeyError, match=r'image_target\.ema\.module\.'):
        conv.main([path, str(tmp_path / 'out.pth'), '--encoder', 'momentum'])
    assert not (tmp_path / 'out.pth').exists()
    with pytest.raises(KeyError, match=r'"backbone\."'):
        conv.convert({'image_decoder.x': torch.zeros(1)}, encoder='online')
    with pytest.raises(KeyError, match='cls_head.weight'):
        conv.convert({'backbone.cls_head.weight': torch.zeros(1)},
                     layout='mmseg')


def test_cli_writes_backbone_only_checkpoint(m3i, tmp_path, capsys):
    model, path = m3i
    out = tmp_path / 'vit_backbone.pth'
    conv.main([path, str(out), '--encoder', 'momentum', '--img-size', '32'])
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]
    ckpt = CheckpointLoader.load_checkpoint(str(out), map_location='cpu')
    assert ckpt['meta']['encoder'] == 'momentum'
    assert ckpt['meta']['img_size'] == [32]
    state = ckpt['state_dict']
    ema = model.image_target.ema.module.state_dict()
    assert set(state) == {'backbone.' + k for k in ema}
    assert torch.equal(state['backbone.layers.1.ffn.layers.1.weight'],
                       ema['layers.1.ffn.layers.1.weight'])
    assert state['backbone.pos_embed'].shape == (1, 8 * 8 + 1, DIMS)
    printed = capsys.readouterr().out
    for part in ('image_decoder', 'category_head', 'category_embedding',
                 'backbone ('):
        assert part in printed
