"""Export the ViT encoder of an M3I checkpoint to timm or Hugging Face.

Writes a folder with ``model.safetensors`` and ``config.json`` (for
``--format hf`` also ``preprocessor_config.json``) holding the online encoder
(``backbone.``; ``--momentum``: the momentum target encoder
``image_target.ema.module.``) of an mmengine checkpoint of our M3I runner.
Keys are read with :func:`m3i_to_downstream.convert` (the checkpoint is parsed
as data, never unpickled); ``--img-size`` resizes the absolute position
embedding (bicubic, mmpretrain's ``resize_pos_embed``, the class-token entry
kept), as our backbone does at run time for that input size.

The export takes RGB input: for a config whose data preprocessor keeps
mmcv's BGR order (``to_rgb=False``, our demo configs) the input channels of
``patch_embed.projection.weight`` and the mean / std are reversed.

The architecture (heads, LayerNorm eps, ...) comes from the checkpoint's
``meta.cfg`` (the config text the runner stores) or ``--config``: its
``model.backbone`` must be mmpretrain's ``VisionTransformer`` with exact GELU
and LayerNorm. Mapping (mmpretrain -> timm ``VisionTransformer`` / transformers
``ViTModel``):

- ``patch_embed.projection`` -> ``patch_embed.proj`` /
  ``embeddings.patch_embeddings.projection``; ``cls_token``, ``pos_embed``
  (with the class-token entry) -> same / ``embeddings.cls_token``,
  ``embeddings.position_embeddings``;
- ``layers.i.ln1|ln2`` -> ``blocks.i.norm1|norm2`` /
  ``encoder.layer.i.layernorm_before|after``; ``attn.qkv`` (rows q, k, v;
  heads inside each) -> ``attn.qkv`` / ``attention.attention.query|key|value``;
  ``attn.proj`` -> ``attn.proj`` / ``attention.output.dense``;
  ``ffn.layers.0.0|1`` -> ``mlp.fc1|fc2`` / ``intermediate.dense``,
  ``output.dense``; final ``ln1`` -> ``norm`` / ``layernorm``;
- timm only: layer scale ``attn.gamma1`` / ``ffn.gamma2`` -> ``ls1|ls2.gamma``,
  ``pre_norm`` -> ``norm_pre``; a backbone without class token pools by
  average (``global_pool='avg'``, no ``fc_norm``).
- hf only: ``pooler.dense`` is written as the identity with
  ``pooler_act='linear'``: ``pooler_output`` is the final-normed class token
  (our ``out_type='cls_token'``), and ``ViTModel.from_pretrained(folder)``
  loads every key.

Refused, naming the key: layer scale, ``pre_norm``, a missing class token or
final norm for ``hf``; any key without a counterpart (``ln2`` of
``out_type='avg_featmap'``, SwiGLU FFNs, ...); for ``timm`` a LayerNorm eps
other than timm's 1e-6.

Usage::

    python tools/model_converters/m3i_to_timm_hf.py CKPT OUT_DIR \\
        --format timm|hf [--momentum] [--img-size 224] [--config CONFIG]
"""
import argparse
import json
import os
import os.path as osp
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from m3i_to_downstream import ENCODER_PREFIXES, convert  # noqa: E402

TIMM_ARCH = 'vit_base_patch16_224'  # every argument below is given

# mmpretrain ViT key -> timm VisionTransformer key.
_TIMM_RULES = [
    (r'(cls_token|pos_embed)', r'\1'),
    (r'patch_embed\.projection\.(weight|bias)', r'patch_embed.proj.\1'),
    (r'pre_norm\.(weight|bias)', r'norm_pre.\1'),
    (r'layers\.(\d+)\.ln([12])\.(weight|bias)', r'blocks.\1.norm\2.\3'),
    (r'layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)',
     r'blocks.\1.attn.\2.\3'),
    (r'layers\.(\d+)\.attn\.gamma1\.weight', r'blocks.\1.ls1.gamma'),
    (r'layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)',
     r'blocks.\1.mlp.fc1.\2'),
    (r'layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)',
     r'blocks.\1.mlp.fc2.\2'),
    (r'layers\.(\d+)\.ffn\.gamma2\.weight', r'blocks.\1.ls2.gamma'),
    (r'ln1\.(weight|bias)', r'norm.\1'),
]
# mmpretrain ViT key -> transformers ViTModel key (qkv is split apart).
_HF_RULES = [
    (r'cls_token', 'embeddings.cls_token'),
    (r'pos_embed', 'embeddings.position_embeddings'),
    (r'patch_embed\.projection\.(weight|bias)',
     r'embeddings.patch_embeddings.projection.\1'),
    (r'layers\.(\d+)\.ln1\.(weight|bias)',
     r'encoder.layer.\1.layernorm_before.\2'),
    (r'layers\.(\d+)\.ln2\.(weight|bias)',
     r'encoder.layer.\1.layernorm_after.\2'),
    (r'layers\.(\d+)\.attn\.qkv\.(weight|bias)',
     r'encoder.layer.\1.attention.attention.{}.\2'),
    (r'layers\.(\d+)\.attn\.proj\.(weight|bias)',
     r'encoder.layer.\1.attention.output.dense.\2'),
    (r'layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)',
     r'encoder.layer.\1.intermediate.dense.\2'),
    (r'layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)',
     r'encoder.layer.\1.output.dense.\2'),
    (r'ln1\.(weight|bias)', r'layernorm.\1'),
]
# Keys hf has no place for, and why.
_HF_REFUSED = [
    (r'layers\.\d+\.(attn\.gamma1|ffn\.gamma2)\.weight',
     "layer scale: transformers' ViTModel has none (use --format timm)"),
    (r'pre_norm\.(weight|bias)',
     "a norm before the blocks: transformers' ViTModel has none "
     '(use --format timm)'),
]


class ExportError(ValueError):
    """The checkpoint's backbone has no exact timm / transformers form."""


def checkpoint_config(checkpoint: Dict[str, Any], src: str,
                      config: Optional[str] = None) -> Tuple[Any, str]:
    """The config a checkpoint was trained with.

    Args:
        checkpoint (dict): The loaded checkpoint.
        src (str): Its file name (for errors).
        config (str, optional): A config file to read instead of the
            checkpoint's ``meta.cfg``.

    Returns:
        tuple: (mmengine ``Config``, where it came from).

    Raises:
        ExportError: No ``meta.cfg`` and no ``config``.
    """
    from mmengine.config import Config
    if config is not None:
        return Config.fromfile(config), config
    text = (checkpoint.get('meta') or {}).get('cfg')
    if not isinstance(text, str):
        raise ExportError(
            f'{src} has no meta.cfg (the config text our runner saves); '
            f'pass --config with the config it was trained with')
    return Config.fromstring(text, '.py'), f'{src} meta.cfg'


def backbone_config(cfg: Any, where: str) -> Dict[str, Any]:
    """``model.backbone`` of ``cfg`` as a dict; :class:`ExportError`
    naming ``where`` when there is none."""
    backbone = cfg.get('model', {}).get('backbone')
    if not isinstance(backbone, dict):
        raise ExportError(f'{where} has no model.backbone')
    return backbone.to_dict() if hasattr(backbone, 'to_dict') else backbone


def normalization(cfg: Any) -> Tuple[List[float], List[float], bool]:
    """Input convention of ``model.data_preprocessor``.

    Returns:
        tuple: (mean, std) on a 0..1 scale in the channel order the backbone
        sees (ImageNet's RGB values when the config has none), and whether
        that order is BGR (mmcv's, kept with ``to_rgb=False``, mmpretrain's
        default).
    """
    pre = cfg.get('model', {}).get('data_preprocessor') or {}
    mean = pre.get('mean', [123.675, 116.28, 103.53])
    std = pre.get('std', [58.395, 57.12, 57.375])
    bgr = not pre.get('to_rgb', pre.get('bgr_to_rgb', False))
    return [m / 255 for m in mean], [s / 255 for s in std], bgr


def vit_spec(backbone_cfg: Dict[str, Any], state: Dict[str, torch.Tensor],
             encoder: str = 'online') -> Dict[str, Any]:
    """Architecture of an mmpretrain ``VisionTransformer`` and its weights.

    The backbone is built on the ``meta`` device (no memory, no init) and
    its keys and shapes must be those of ``state``.

    Args:
        backbone_cfg (dict): ``model.backbone`` of the config.
        state (dict): Bare backbone keys -> tensors, ``pos_embed`` already
            on the exported grid.
        encoder (str): Which encoder (for errors).

    Returns:
        dict: ``embed_dim``, ``depth``, ``num_heads``, ``mlp_hidden``,
        ``patch_size`` (h, w), ``img_size`` (h, w), ``in_chans``, ``eps``,
        ``qkv_bias``, ``class_token``, ``layer_scale``, ``pre_norm``,
        ``final_norm``.

    Raises:
        ExportError: Another backbone type, activation or norm; a key or
            shape that differs from the built backbone.
    """
    from mmpretrain.models import VisionTransformer
    from mmpretrain.registry import MODELS
    if MODELS.get(backbone_cfg.get('type')) is not VisionTransformer:
        raise ExportError(
            f'model.backbone.type={backbone_cfg.get("type")!r}: only '
            f"mmpretrain's VisionTransformer exports to timm / transformers")
    with torch.device('meta'):
        vit = MODELS.build(dict(backbone_cfg, init_cfg=None))
    norms = [m for m in vit.modules() if 'Norm' in type(m).__name__]
    if any(type(m) is not torch.nn.LayerNorm for m in norms):
        raise ExportError('model.backbone.norm_cfg: only LayerNorm exports')
    act = vit.layers[0].ffn.layers[0][1]
    if type(act) is not torch.nn.GELU or act.approximate != 'none':
        raise ExportError(f'model.backbone FFN activation {act}: only exact '
                          f'GELU exports')
    expected = {k: v.shape for k, v in vit.state_dict().items()}
    expected['pos_embed'] = state.get('pos_embed', vit.pos_embed).shape
    prefix = ENCODER_PREFIXES[encoder]
    for key in sorted(set(expected) | set(state)):
        if key not in state:
            raise ExportError(f'"{prefix}{key}" of the configured backbone is '
                              f'missing from the checkpoint')
        if key not in expected:
            raise ExportError(f'"{prefix}{key}" is in the checkpoint but not '
                              f'in the configured backbone')
        if state[key].shape != expected[key]:
            raise ExportError(f'"{prefix}{key}": checkpoint shape '
                              f'{tuple(state[key].shape)}, configured '
                              f'{tuple(expected[key])}')
    dim, chans, *patch = state['patch_embed.projection.weight'].shape
    extra = 1 if 'cls_token' in state else 0
    tokens = state['pos_embed'].shape[1] - extra
    side = int(round(tokens**0.5))
    return dict(
        embed_dim=dim, depth=len(vit.layers),
        num_heads=vit.layers[0].attn.num_heads,
        mlp_hidden=state['layers.0.ffn.layers.0.0.weight'].shape[0],
        patch_size=tuple(patch), img_size=(side * patch[0], side * patch[1]),
        in_chans=chans, eps=norms[0].eps,
        qkv_bias='layers.0.attn.qkv.bias' in state, class_token=bool(extra),
        layer_scale='layers.0.attn.gamma1.weight' in state,
        pre_norm='pre_norm.weight' in state, final_norm='ln1.weight' in state)


def _rename(key: str, rules: List[Tuple[str, str]], encoder: str,
            target: str) -> str:
    for pattern, repl in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(repl)
    raise ExportError(f'"{ENCODER_PREFIXES[encoder]}{key}" has no counterpart '
                      f'in {target}')


def timm_export(state: Dict[str, torch.Tensor], spec: Dict[str, Any],
                encoder: str = 'online'
                ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """timm ``VisionTransformer`` weights and ``create_model`` arguments.

    Args:
        state (dict): Bare mmpretrain ViT keys -> tensors.
        spec (dict): :func:`vit_spec` of it.
        encoder (str): Which encoder (for errors).

    Returns:
        tuple: (timm keys -> tensors, ``model_args`` for
        ``timm.create_model(TIMM_ARCH, **model_args)``).

    Raises:
        ExportError: A key without a timm counterpart, or an eps timm's
            ViT does not use (``model.backbone.norm_cfg.eps``).
    """
    if abs(spec['eps'] - 1e-6) > 1e-12:
        raise ExportError(f'model.backbone.norm_cfg.eps={spec["eps"]}: '
                          f"timm's VisionTransformer uses 1e-6")
    if ('patch_embed.projection.bias' in state) == spec['pre_norm']:
        raise ExportError(f'"{ENCODER_PREFIXES[encoder]}patch_embed.projection'
                          f'.bias": timm has it exactly when there is no '
                          f'pre_norm')
    out = {_rename(k, _TIMM_RULES, encoder, "timm's VisionTransformer"): v
           for k, v in state.items()}
    model_args = dict(
        img_size=list(spec['img_size']), patch_size=list(spec['patch_size']),
        in_chans=spec['in_chans'], embed_dim=spec['embed_dim'],
        depth=spec['depth'], num_heads=spec['num_heads'],
        mlp_ratio=spec['mlp_hidden'] / spec['embed_dim'],
        qkv_bias=spec['qkv_bias'],
        init_values=1.0 if spec['layer_scale'] else None,
        class_token=spec['class_token'],
        global_pool='token' if spec['class_token'] else 'avg',
        fc_norm=False, pre_norm=spec['pre_norm'],
        final_norm=spec['final_norm'], num_classes=0)
    return out, model_args


def hf_export(state: Dict[str, torch.Tensor], spec: Dict[str, Any],
              encoder: str = 'online'
              ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """transformers ``ViTModel`` weights and ``ViTConfig`` arguments
    (arguments as :func:`timm_export`).

    Returns:
        tuple: (ViTModel keys -> tensors, with an identity ``pooler.dense``;
        ``ViTConfig`` keyword arguments).

    Raises:
        ExportError: Layer scale, ``pre_norm``, no class token or no final
            norm, or another key without a ``ViTModel`` counterpart.
    """
    prefix = ENCODER_PREFIXES[encoder]
    for pattern, why in _HF_REFUSED:
        for key in state:
            if re.fullmatch(pattern, key):
                raise ExportError(f'"{prefix}{key}": {why}')
    for key, what in (('cls_token', 'a class token'),
                      ('ln1.weight', 'a final norm')):
        if key not in state:
            raise ExportError(f'no "{prefix}{key}": transformers\' ViTModel '
                              f'always has {what} (use --format timm)')
    dim = spec['embed_dim']
    out = {}
    for key, value in state.items():
        name = _rename(key, _HF_RULES, encoder, "transformers' ViTModel")
        if '{}' in name:  # qkv rows: query, key, value
            for part, chunk in zip(('query', 'key', 'value'),
                                   value.chunk(3, dim=0)):
                out[name.format(part)] = chunk
        else:
            out[name] = value
    out['pooler.dense.weight'] = torch.eye(
        dim, dtype=state['ln1.weight'].dtype)
    out['pooler.dense.bias'] = torch.zeros_like(state['ln1.weight'])
    if spec['patch_size'][0] != spec['patch_size'][1] or \
            spec['img_size'][0] != spec['img_size'][1]:
        raise ExportError(f'patch {spec["patch_size"]} / image '
                          f'{spec["img_size"]}: ViTConfig takes square ones')
    config = dict(
        hidden_size=dim, num_hidden_layers=spec['depth'],
        num_attention_heads=spec['num_heads'],
        intermediate_size=spec['mlp_hidden'], hidden_act='gelu',
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=spec['eps'], image_size=spec['img_size'][0],
        patch_size=spec['patch_size'][0], num_channels=spec['in_chans'],
        qkv_bias=spec['qkv_bias'], pooler_act='linear')
    return out, config


def _check_keys(exported: Dict[str, torch.Tensor], model: torch.nn.Module,
                target: str) -> None:
    """Keys and shapes of ``exported`` must be the model's (built on the
    meta device), else :class:`ExportError` naming the first difference."""
    wanted = model.state_dict()
    for key in sorted(set(wanted) | set(exported)):
        if key not in exported or key not in wanted or \
                exported[key].shape != wanted[key].shape:
            shape = tuple(wanted[key].shape) if key in wanted else None
            raise ExportError(f'{target}: "{key}" would not load (exported: '
                              f'{key in exported}, expected shape {shape})')


def _save(tensors: Dict[str, torch.Tensor], out_dir: str) -> str:
    from safetensors.torch import save_file
    path = osp.join(out_dir, 'model.safetensors')
    save_file({k: v.detach().to('cpu').contiguous().clone()
               for k, v in tensors.items()}, path, metadata={'format': 'pt'})
    return path


def export(src: str, out_dir: str, fmt: str, encoder: str = 'online',
           img_size: Optional[Sequence[int]] = None,
           config: Optional[str] = None) -> Dict[str, Any]:
    """Write ``model.safetensors`` + config for timm or transformers.

    Args:
        src (str): M3I checkpoint (mmengine format, with ``meta.cfg``
            unless ``config`` is given).
        out_dir (str): Output folder (created).
        fmt (str): ``'timm'`` or ``'hf'``.
        encoder (str): ``'online'`` or ``'momentum'``.
        img_size (Sequence[int], optional): Input size (one int or h, w);
            defaults to the pre-training size.
        config (str, optional): Config file, instead of ``meta.cfg``.

    Returns:
        dict: The written ``config.json`` content.

    Raises:
        ExportError: See :func:`vit_spec`, :func:`timm_export`,
            :func:`hf_export`, :func:`checkpoint_config`.
        KeyError: No weights of the encoder in ``src``.
    """
    from mmengine.runner import CheckpointLoader
    checkpoint = CheckpointLoader.load_checkpoint(src, map_location='cpu')
    state = convert(checkpoint, encoder=encoder, img_size=img_size, prefix='')
    cfg, where = checkpoint_config(checkpoint, src, config)
    spec = vit_spec(backbone_config(cfg, where), state, encoder)
    mean, std, bgr = normalization(cfg)
    if bgr and spec['in_chans'] == 3:  # timm and transformers take RGB
        weight = state['patch_embed.projection.weight']
        state['patch_embed.projection.weight'] = weight.flip(1)
        mean, std = mean[::-1], std[::-1]
    os.makedirs(out_dir, exist_ok=True)
    if fmt == 'timm':
        import timm
        tensors, model_args = timm_export(state, spec, encoder)
        with torch.device('meta'):
            _check_keys(tensors, timm.create_model(
                TIMM_ARCH, pretrained=False, weight_init='skip',
                **model_args), "timm's VisionTransformer")
        content = dict(
            architecture=TIMM_ARCH, num_classes=0,
            num_features=spec['embed_dim'],
            global_pool=model_args['global_pool'], model_args=model_args,
            pretrained_cfg=dict(
                tag='m3i', custom_load=False,
                input_size=[spec['in_chans'], *spec['img_size']],
                fixed_input_size=True, interpolation='bicubic', crop_pct=1.0,
                crop_mode='center', mean=mean, std=std, num_classes=0,
                pool_size=None, first_conv='patch_embed.proj',
                classifier='head'))
        with open(osp.join(out_dir, 'config.json'), 'w') as f:
            json.dump(content, f, indent=2)
    elif fmt == 'hf':
        from transformers import ViTConfig, ViTImageProcessor, ViTModel
        tensors, kwargs = hf_export(state, spec, encoder)
        hf_config = ViTConfig(**kwargs)
        with torch.device('meta'):
            _check_keys(tensors, ViTModel(hf_config), "transformers' ViTModel")
        hf_config.save_pretrained(out_dir)
        ViTImageProcessor(
            size=dict(height=spec['img_size'][0], width=spec['img_size'][1]),
            image_mean=mean, image_std=std).save_pretrained(out_dir)
        content = hf_config.to_dict()
    else:
        raise ValueError(f"fmt must be 'timm' or 'hf', got {fmt!r}")
    _save(tensors, out_dir)
    return content


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Export the ViT encoder of an M3I checkpoint to timm or '
        'Hugging Face transformers (safetensors + config)')
    parser.add_argument('src', help='M3I checkpoint (.pth)')
    parser.add_argument('out_dir', help='output folder')
    parser.add_argument('--format', choices=('timm', 'hf'), required=True)
    parser.add_argument('--momentum', action='store_true',
                        help='export the momentum target encoder instead of '
                        'the online encoder')
    parser.add_argument('--img-size', type=int, nargs='+',
                        help='input size (one int or H W): resize pos_embed')
    parser.add_argument('--config', help='config of the checkpoint (default: '
                        'its meta.cfg)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line entry point (see the module docstring)."""
    args = parse_args(argv)
    import m3i_mm  # noqa: F401  (checkpoints parsed as data)
    encoder = 'momentum' if args.momentum else 'online'
    try:
        export(args.src, args.out_dir, args.format, encoder, args.img_size,
               args.config)
    except (ExportError, KeyError, OSError) as err:
        sys.exit(f'{args.src}: {type(err).__name__}: {err}')
    print(f'{args.out_dir}: {encoder} encoder of {args.src} for '
          f'{args.format} (model.safetensors, config.json)')


if __name__ == '__main__':
    main()
