"""InternImage backbone: variants, outputs, options, registries, converter.

Full-size variants are built on the ``meta`` device (no memory, no init) to
count parameters; behaviour is tested on tiny architectures.
"""

import argparse

import pytest
import torch
import torch.nn as nn

from m3i_mm.models.backbones.internimage import InternImage
from m3i_mm.ops import DCNv3

from conftest import load_script  # noqa: E402
# Published sizes of the ImageNet classifiers (InternImage paper, Table 1 /
# official README), i.e. backbone + classification projection + 1000-way fc.
PUBLISHED_PARAMS = {
    't': 30e6,
    's': 50e6,
    'b': 97e6,
    'l': 223e6,
    'xl': 335e6,
    'h': 1.08e9
}
TINY = dict(channels=16, depths=[1, 1, 2, 1], groups=[2, 2, 4, 4])
TINY_H = dict(
    TINY,
    dw_kernel_size=5,
    res_post_norm=True,
    level2_post_norm_block_ids=[0, 1],
    center_feature_scale=True,
    use_clip_projector=True,
    clip_embed_dims=32,
    clip_num_heads=4,
    clip_out_dims=24)
TINY_POST_NORM = dict(TINY, layer_scale=1e-5, post_norm=True, offset_scale=2.0)


def load_converter():
    return load_script('tools', 'model_converters',
                       'internimage_official_to_m3i.py')


@pytest.mark.parametrize('arch', list(PUBLISHED_PARAMS))
def test_param_count_matches_published(arch):
    with torch.device('meta'):
        model = InternImage(arch=arch, out_indices=(4, ))
    params = sum(p.numel() for p in model.parameters())
    features = (
        model.arch['clip_out_dims'] if arch == 'h' else int(model.channels[3] *
                                                            1.5))
    params += features * 1000 + 1000  # the 1000-way linear classifier
    assert abs(params / PUBLISHED_PARAMS[arch] - 1) < 0.01, params


def test_variant_options():
    with torch.device('meta'):
        small = InternImage(arch='small')
        huge = InternImage(arch='h')
        tiny = InternImage(arch='t')
    block = small.stages[0].blocks[0]
    assert block.post_norm and isinstance(block.ls1, nn.Module)
    assert tuple(block.ls1.weight.shape) == (80, )
    assert isinstance(small.stages[3].norm, nn.Identity)  # post-norm: none
    assert isinstance(tiny.stages[0].blocks[0].ls1, nn.Identity)
    assert isinstance(tiny.stages[3].norm, nn.LayerNorm)
    h_block = huge.stages[2].blocks[0]
    assert h_block.res_post_norm and h_block.dcn.center_feature_scale
    assert h_block.dcn.dw_conv.kernel_size == (5, 5)
    assert huge.stages[2].post_norm_block_ids == [5, 11, 17, 23, 29]
    assert len(huge.stages[2].post_norms) == 5
    assert len(huge.stages[1].post_norms) == 0
    assert [s.blocks[0].dcn.group for s in huge.stages] == [10, 20, 40, 80]
    assert InternImage.arch_zoo['l']['offset_scale'] == 2.0


def test_outputs_shapes_and_channels_first():
    model = InternImage(arch=TINY, out_indices=(0, 1, 2, 3, 4))
    outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 16, 16), (2, 32, 8, 8),
                                              (2, 64, 4, 4), (2, 128, 2, 2),
                                              (2, 192, 2, 2)]
    assert all(o.is_contiguous() for o in outs)
    # negative indices count stages; the projection exists only if asked
    model = InternImage(arch=TINY, out_indices=(-1, ))
    assert model.out_indices == (3, ) and not hasattr(model, 'cls_proj')


def test_stage_output_is_before_downsampling():
    model = InternImage(arch=TINY, out_indices=(0, 1))
    x = torch.randn(1, 3, 32, 32)
    stage0, stage1 = model(x)
    out, down = model.stages[0](model.stem(x))
    torch.testing.assert_close(stage0, out.permute(0, 3, 1, 2))
    expected, _ = model.stages[1](down)
    torch.testing.assert_close(stage1, expected.permute(0, 3, 1, 2))


def test_huge_like_clip_projector_and_checkpointing():
    torch.manual_seed(0)
    plain = InternImage(arch=TINY_H, out_indices=(2, 4))
    plain.init_weights()
    ckpt = InternImage(arch=TINY_H, out_indices=(2, 4), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    outs = plain(x)
    assert tuple(outs[1].shape) == (2, 24)
    outs_cp = ckpt(x)
    for a, b in zip(outs, outs_cp):
        torch.testing.assert_close(a, b)
    sum(o.sum() for o in outs).backward()
    grad = x.grad.clone()
    x.grad = None
    sum(o.sum() for o in outs_cp).backward()
    torch.testing.assert_close(x.grad, grad)
    for (name, p), p_cp in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p_cp.grad, p.grad, msg=name)


def test_clip_projector_rejects_odd_sizes():
    model = InternImage(arch=TINY_H, out_indices=(4, ))
    with pytest.raises(ValueError, match='twice the stage 4 size'):
        model(torch.randn(1, 3, 48, 48))  # stage 3: 3x3, stage 4: 2x2


def test_post_norm_variant_forward_backward():
    model = InternImage(
        arch=TINY_POST_NORM, out_indices=(3, 4), drop_path_rate=0.1)
    model.train()
    outs = model(torch.randn(2, 3, 32, 32))
    sum(o.square().mean() for o in outs).backward()
    assert model.stages[0].blocks[0].ls1.weight.grad is not None


def test_init_weights_is_official():
    model = InternImage(arch=TINY, out_indices=(4, ))
    model.init_weights()
    dcn = model.stages[1].blocks[0].dcn
    assert dcn.offset.weight.abs().max() == 0
    assert dcn.mask.weight.abs().max() == 0
    fc1 = model.stages[1].blocks[0].mlp.layers[0][0]
    assert fc1.bias.abs().max() == 0 and 0.01 < fc1.weight.std() < 0.03


def test_frozen_stages():
    model = InternImage(arch=TINY, frozen_stages=2)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1]]
    for module in frozen:
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert model.stages[2].training
    assert all(p.requires_grad for p in model.stages[2].parameters())
    with pytest.raises(ValueError, match='frozen_stages'):
        InternImage(arch=TINY, frozen_stages=5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch 'g'"):
        InternImage(arch='g')
    with pytest.raises(ValueError, match=r"misses keys \['groups'\]"):
        InternImage(arch=dict(channels=16, depths=[1, 1, 1, 1]))
    with pytest.raises(ValueError, match='out_indices entry 5'):
        InternImage(arch=TINY, out_indices=(5, ))


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_registered(scope):
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(dict(type='InternImage', arch=TINY))
    assert isinstance(model, InternImage)


def test_dcnv3_registered_in_mmpretrain():
    from mmpretrain.registry import MODELS
    assert MODELS.get('DCNv3') is DCNv3


def test_init_from_checkpoint(tmp_path):
    source = InternImage(arch=TINY)
    source.init_weights()
    path = str(tmp_path / 'ckpt.pth')
    torch.save(
        {
            'state_dict': {
                f'backbone.{k}': v
                for k, v in source.state_dict().items()
            }
        }, path)
    model = InternImage(
        arch=TINY,
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    model.init_weights()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def official_state_dict(arch: dict, num_classes: int = 10) -> dict:
    """A state dict with the official InternImage classifier's key names.

    Built from the architecture by the structure of
    ``OpenGVLab/InternImage classification/models/intern_image.py``: norms
    are nn.Sequential (LN at index 0, or 1 after a layout permute), the MLP
    is ``fc1``/``fc2``, layer scales ``gamma1``/``gamma2``, heads
    ``conv_head`` (T to XL) or ``dcnv3_head_x4``/``dcnv3_head_x3``/
    ``clip_projector``/``fc_norm`` (H), classifier ``head``.
    """
    arch = dict(InternImage.arch_defaults, **arch)
    state = {}
    gen = torch.Generator().manual_seed(0)

    def add(name, *shape):
        state[name] = torch.randn(*shape, generator=gen)

    def norm(name, channels):
        add(f'{name}.weight', channels)
        add(f'{name}.bias', channels)

    def linear(name, cin, cout, bias=True):
        add(f'{name}.weight', cout, cin)
        if bias:
            add(f'{name}.bias', cout)

    c0 = arch['channels']
    add('patch_embed.conv1.weight', c0 // 2, 3, 3, 3)
    add('patch_embed.conv1.bias', c0 // 2)
    norm('patch_embed.norm1.1', c0 // 2)
    add('patch_embed.conv2.weight', c0, c0 // 2, 3, 3)
    add('patch_embed.conv2.bias', c0)
    norm('patch_embed.norm2.1', c0)
    dw = arch['dw_kernel_size'] or 3
    for i, depth in enumerate(arch['depths']):
        c, group = c0 * 2**i, arch['groups'][i]
        for j in range(depth):
            b = f'levels.{i}.blocks.{j}.'
            norm(b + 'norm1.0', c)
            norm(b + 'norm2.0', c)
            add(b + 'dcn.dw_conv.0.weight', c, 1, dw, dw)
            add(b + 'dcn.dw_conv.0.bias', c)
            norm(b + 'dcn.dw_conv.1.1', c)
            linear(b + 'dcn.offset', c, group * 9 * 2)
            linear(b + 'dcn.mask', c, group * 9)
            linear(b + 'dcn.input_proj', c, c)
            linear(b + 'dcn.output_proj', c, c)
            if arch['center_feature_scale']:
                add(b + 'dcn.center_feature_scale_proj_weight', group, c)
                add(b + 'dcn.center_feature_scale_proj_bias', group)
            linear(b + 'mlp.fc1', c, 4 * c)
            linear(b + 'mlp.fc2', 4 * c, c)
            if arch['layer_scale'] is not None:
                add(b + 'gamma1', c)
                add(b + 'gamma2', c)
            if arch['res_post_norm']:
                norm(b + 'res_post_norm1.0', c)
                norm(b + 'res_post_norm2.0', c)
        if not arch['post_norm'] or arch['center_feature_scale']:
            norm(f'levels.{i}.norm.0', c)
        if i == 2:
            for k, _ in enumerate(arch['level2_post_norm_block_ids'] or []):
                norm(f'levels.2.post_norms.{k}.0', c)
        if i < 3:
            add(f'levels.{i}.downsample.conv.weight', 2 * c, c, 3, 3)
            norm(f'levels.{i}.downsample.norm.1', 2 * c)
    c3, c4 = c0 * 4, c0 * 8
    if arch['use_clip_projector']:
        embed, out = arch['clip_embed_dims'], arch['clip_out_dims']
        add('dcnv3_head_x4.0.weight', embed * 4, c4, 1, 1)
        add('dcnv3_head_x4.0.bias', embed * 4)
        add('dcnv3_head_x3.weight', embed, c3, 1, 1)
        add('dcnv3_head_x3.bias', embed)
        for t in 'qkv':
            norm(f'clip_projector.norm1_{t}.0', embed)
            linear(f'clip_projector.cross_dcn.{t}', embed, embed, bias=False)
            add(f'clip_projector.cross_dcn.{t}_bias', embed)
        linear('clip_projector.cross_dcn.proj', embed, out)
        norm('fc_norm.0', out)
    else:
        out = int(c4 * 1.5)
        add('conv_head.0.weight', out, c4, 1, 1)
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            add(f'conv_head.1.0.{name}', out)
        state['conv_head.1.0.num_batches_tracked'] = torch.tensor(7)
    linear('head', out, num_classes)
    return state


@pytest.mark.parametrize(
    'arch', [TINY, TINY_POST_NORM, TINY_H],
    ids=['tiny', 'post_norm', 'huge_like'])
def test_converter_loads_strictly(arch):
    converter = load_converter()
    official = official_state_dict(arch)
    converted = converter.convert_internimage({
        'module.' + k: v
        for k, v in official.items()
    })
    assert len(converted) == len(official)
    backbone = InternImage(arch=arch, out_indices=(4, ))
    backbone.load_state_dict(
        {
            k[len('backbone.'):]: v
            for k, v in converted.items() if k.startswith('backbone.')
        },
        strict=True)
    head = nn.Linear(official['head.weight'].shape[1], 10)
    head.load_state_dict(
        {
            k[len('head.fc.'):]: v
            for k, v in converted.items() if k.startswith('head.fc.')
        },
        strict=True)
    ours = backbone.state_dict()
    pairs = {
        'levels.1.blocks.0.dcn.dw_conv.1.1.weight':
        'stages.1.blocks.0.dcn.dw_norm.weight',
        'levels.1.blocks.0.norm2.0.bias': 'stages.1.blocks.0.norm2.bias',
        'levels.2.blocks.1.mlp.fc2.weight':
        'stages.2.blocks.1.mlp.layers.1.weight',
        'levels.0.downsample.norm.1.weight': 'stages.0.downsample.norm.weight',
        'patch_embed.norm1.1.bias': 'stem.norm1.bias',
    }
    if arch.get('layer_scale'):
        pairs['levels.3.blocks.0.gamma2'] = 'stages.3.blocks.0.ls2.weight'
    if arch.get('use_clip_projector'):
        pairs['clip_projector.cross_dcn.k_bias'] = 'cls_proj.attn_pool.k.bias'
        pairs['levels.2.post_norms.1.0.weight'] = \
            'stages.2.post_norms.1.weight'
        pairs['levels.0.blocks.0.dcn.center_feature_scale_proj_weight'] = \
            'stages.0.blocks.0.dcn.center_feature_scale_proj.weight'
    else:
        pairs['conv_head.1.0.running_var'] = 'cls_proj.bn.running_var'
    for official_key, our_key in pairs.items():
        torch.testing.assert_close(ours[our_key], official[official_key])
    torch.testing.assert_close(head.weight, official['head.weight'])


def test_converter_keeps_other_keys_and_rejects_unknown():
    converter = load_converter()
    converted = converter.convert_internimage({
        'backbone.levels.0.blocks.0.gamma1':
        torch.zeros(1),
        'neck.lateral_convs.0.conv.weight':
        torch.ones(1),
    })
    assert list(converted) == [
        'backbone.stages.0.blocks.0.ls1.weight',
        'neck.lateral_convs.0.conv.weight'
    ]
    with pytest.raises(KeyError, match='levels.0.blocks.0.dcn.unknown'):
        converter.convert_internimage(
            {'levels.0.blocks.0.dcn.unknown.weight': torch.zeros(1)})




def test_drop_path_schedules():
    from m3i_mm.models.backbones.internimage import InternImage
    arch = dict(channels=8, depths=[1, 1, 2, 1], groups=[1, 1, 2, 2])
    rates = {}
    for kind in ('linear', 'uniform'):
        model = InternImage(arch=arch, drop_path_rate=0.2,
                            drop_path_type=kind)
        rates[kind] = [
            getattr(block.drop_path, 'drop_prob', 0.0)
            for stage in model.stages for block in stage.blocks
        ]
    assert rates['uniform'] == pytest.approx([0.2] * 5)
    assert rates['linear'] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    with pytest.raises(ValueError, match='drop_path_type'):
        InternImage(arch=arch, drop_path_type='cosine')


def test_layer_depths_follow_the_official_constructor():
    # TINY_H: depths 1/1/2/1, so 5 blocks and 7 depths; stage 2 has
    # post-norms after its blocks 0 and 1.
    model = InternImage(arch=TINY_H, out_indices=(0, 1, 2, 3, 4))
    expected = {
        'stem.conv1.weight': 0,
        'stages.0.blocks.0.dcn.offset.weight': 1,
        'stages.0.norm.weight': 2,
        'stages.0.downsample.conv.weight': 2,
        'stages.1.blocks.0.mlp.layers.0.0.weight': 2,
        'stages.1.downsample.norm.weight': 3,
        'stages.2.blocks.0.norm1.weight': 3,
        'stages.2.post_norms.0.weight': 3,
        'stages.2.blocks.1.dcn.input_proj.weight': 4,
        'stages.2.post_norms.1.weight': 4,
        'stages.2.downsample.conv.weight': 5,
        'stages.3.blocks.0.dcn.output_proj.bias': 5,
        'stages.3.norm.weight': 5,  # official: stage 3's first block
        'cls_proj.attn_pool.k.bias': 6,
    }
    names = dict(model.named_parameters())
    for name, depth in expected.items():
        assert name in names, name
        assert model.get_layer_depth('backbone.' + name,
                                     'backbone.') == (depth, 7), name
    assert model.get_layer_depth('decode_head.conv_seg.weight',
                                 'backbone.') == (6, 7)
    depths = {model.get_layer_depth(n)[0] for n in names}
    assert depths == set(range(7))


def test_layer_decay_constructor_for_segmentors_and_detectors():
    from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as DET
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as SEG
    model = nn.Module()
    model.backbone = InternImage(arch=TINY)
    model.decode_head = nn.Module()
    model.decode_head.query_embed = nn.Embedding(4, 8)
    model.decode_head.fc = nn.Linear(8, 3)
    cfg = dict(
        type='BackboneLayerDecayOptimWrapperConstructor',
        optim_wrapper_cfg=dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=2.0, weight_decay=0.05)),
        paramwise_cfg=dict(
            layer_decay_rate=0.5,
            flat_decay_mult=0.0,
            custom_keys={'.dcn.offset.': dict(decay_mult=0.0)},
            stem_depth_keys=['decode_head.query_embed']))
    constructor = SEG.get(cfg.pop('type'))
    assert DET.get(constructor.__name__) is constructor
    groups = {
        g['param_name']: g
        for g in constructor(**cfg)(model).optimizer.param_groups
    }
    assert len(groups) == len(list(model.parameters()))
    # lr = 2 * 0.5 ** (7 - depth - 1)
    for name, depth in [('backbone.stem.conv1.weight', 0),
                        ('backbone.stages.2.blocks.1.mlp.layers.1.weight', 4),
                        ('decode_head.query_embed.weight', 0),
                        ('decode_head.fc.weight', 6)]:
        assert groups[name]['lr'] == pytest.approx(2 * 0.5**(6 - depth))
    assert groups['decode_head.fc.weight']['weight_decay'] == 0.05
    assert groups['decode_head.fc.bias']['weight_decay'] == 0.0
    assert groups['backbone.stages.0.blocks.0.dcn.offset.weight'][
        'weight_decay'] == 0.0
    assert groups['backbone.stages.0.blocks.0.dcn.mask.weight'][
        'weight_decay'] == 0.05

    plain = nn.Module()
    plain.fc = nn.Linear(2, 2)
    with pytest.raises(TypeError, match='no backbone with get_layer_depth'):
        constructor(**cfg)(plain)


def test_converter_command_refuses_pickles_and_writes_a_loadable_file(
        tmp_path, monkeypatch):
    from m3i_mm.engine.checkpoint import UnsafeCheckpointError
    converter = load_converter()
    official = InternImage(arch=TINY).state_dict()
    src, dst = tmp_path / 'official.pth', tmp_path / 'm3i.pth'
    torch.save({'model': {'patch_embed.conv1.weight': official[
        'stem.conv1.weight']}, 'args': argparse.Namespace(lr=1)}, src)
    with pytest.raises(UnsafeCheckpointError, match='official.pth'):
        converter.main([str(src), str(dst)])
    assert not dst.exists()
    monkeypatch.setenv('M3I_TRUST_CHECKPOINTS', '1')  # one rule, every tool
    converter.main([str(src), str(dst)])
    saved = torch.load(dst, weights_only=True)['state_dict']
    assert torch.equal(saved['backbone.stem.conv1.weight'],
                       official['stem.conv1.weight'])
