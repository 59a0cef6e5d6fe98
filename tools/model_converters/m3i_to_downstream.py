"""Extract a backbone from an M3I pre-training checkpoint for transfer.

An M3I checkpoint (mmengine format, ``{'state_dict': ..., 'meta': ...}``)
holds the online encoder f_θ under ``backbone.`` and its momentum (EMA) copy
f_φ under ``image_target.ema.module.``, next to parts used only for
pre-training (mixer, image decoder, attention-pooling head, category
embedding, gradient-norm balancer, the EMA step counter). This tool keeps
the chosen encoder, drops everything else and writes the keys the downstream
backbone expects.

``--encoder``: ``online`` (default) or ``momentum``.

``--layout``:

- ``mmpretrain`` (default): mmpretrain's ``VisionTransformer`` key names,
  also those of mmpretrain's ``BEiTViT`` (with ``bias=True`` and
  ``layer_scale_init_value=0``, as our ADE20k config uses it), so the same
  file serves mmpretrain classifiers, mmseg (``type='mmpretrain.BEiTViT'``)
  and mmdet backbones. Default output prefix ``backbone.``: load with
  ``init_cfg=dict(type='Pretrained', checkpoint=FILE, prefix='backbone.')``
  on the backbone, as mmpretrain's own MAE/BEiT fine-tuning configs do.
- ``mmseg``: mmseg's ``VisionTransformer`` (``attn.qkv`` ->
  ``attn.attn.in_proj_*``, ``attn.proj`` -> ``attn.attn.out_proj``,
  ``pre_norm`` -> ``ln_pre``). Default prefix ``''``: mmseg's ViT reads its
  ``init_cfg=dict(type='Pretrained', checkpoint=FILE)`` itself and does not
  support a prefix. Build it with ``patch_bias=True`` and
  ``norm_cfg=dict(type='LN', eps=1e-6)`` to match mmpretrain's ViT.
- ``vitdet``: our ``ViTDet`` detection backbone (mmpretrain ``ViTSAM``
  names, which are mmpretrain ViT's for the blocks). The class token and
  the final norm (``ln1``) are dropped (ViTDet has neither), the absolute
  position embedding loses its class-token entry and becomes a
  ``(1, h, w, C)`` grid (resized to ``--img-size``). With
  ``--rel-pos-heads N`` (the number of heads) every block gets zero
  decomposed relative position tables ``attn.rel_pos_h`` / ``rel_pos_w`` of
  shape ``(2s - 1, C / N)``: ``s`` = ``--window-size`` for window blocks and
  the patch grid for the global ones (``--global-attn-indexes``; default
  ViTSAM's for 12, 24 and 32 blocks). Default prefix ``backbone.``.

``--img-size`` resizes the absolute position embedding (bicubic, mmpretrain's
:func:`resize_pos_embed`; the class-token entry is kept) to the downstream
input size, so the backbone loads strictly at that size.

Relative position biases: M3I's ViT has none. Downstream ViTs that use
per-layer relative position tables (BEiT-style segmentation backbones, the
paper's Table 12) start them fresh. ``--rel-pos-heads N`` writes them as
zeros (``layers.i.attn.relative_position_bias_table``, shape
``((2h-1)(2w-1)+3, N)`` for the ``h x w`` patch grid of ``--img-size``), as
MAE and BEiT fine-tuning initialise them: the downstream network then starts
out computing exactly the pre-trained function. Without it mmpretrain's
``BEiTAttention`` keeps its own truncated-normal (std 0.02) initialisation,
because the ``Pretrained`` loader only overwrites keys the file holds. The
tables' ``relative_position_index`` buffers are never written: they are
fixed geometry that the model builds itself (mmseg's loader drops them too).

Usage::

    python tools/model_converters/m3i_to_downstream.py \\
        work_dirs/m3i_vitb/epoch_1600.pth m3i_vitb_backbone.pth \\
        [--encoder online|momentum] [--layout mmpretrain|mmseg] \\
        [--img-size 512] [--rel-pos-heads 12] [--prefix backbone.]
    # ViTDet (COCO / LVIS):
    python tools/model_converters/m3i_to_downstream.py \\
        work_dirs/m3i_vitb/epoch_1600.pth m3i_vitdet-b_1024.pth \\
        --layout vitdet --img-size 1024 --rel-pos-heads 12
"""
import argparse
import re
from collections import Counter, OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

ENCODER_PREFIXES = {
    'online': 'backbone.',
    'momentum': 'image_target.ema.module.',
}
DEFAULT_PREFIXES = {'mmpretrain': 'backbone.', 'mmseg': '',
                    'vitdet': 'backbone.'}
# ViTSAM's global-attention blocks per depth (ViT-B, -L, -H).
VITDET_GLOBAL_ATTN = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23),
                      32: (7, 15, 23, 31)}
# M3I ViT keys ViTDet has no counterpart for.
_VITDET_DROPPED = re.compile(r'(cls_token|(ln1|ln2|pre_norm)\.(weight|bias))')
_VITDET_KEPT = re.compile(
    r'pos_embed|patch_embed\.projection\.(weight|bias)|layers\.\d+\.'
    r'(ln1|ln2|attn\.qkv|attn\.proj|ffn\.layers\.0\.0|ffn\.layers\.1)'
    r'\.(weight|bias)')

# mmpretrain ViT key -> mmseg ViT key (regular expression on the whole key).
_MMSEG_RULES = [
    (r'layers\.(\d+)\.attn\.qkv\.(weight|bias)',
     r'layers.\1.attn.attn.in_proj_\2'),
    (r'layers\.(\d+)\.attn\.proj\.(weight|bias)',
     r'layers.\1.attn.attn.out_proj.\2'),
    (r'pre_norm\.(weight|bias)', r'ln_pre.\1'),
    # Same name in both libraries.
    (r'(cls_token|pos_embed)', r'\1'),
    (r'patch_embed\.projection\.(weight|bias)', r'patch_embed.projection.\1'),
    (r'layers\.(\d+)\.(ln1|ln2)\.(weight|bias)', r'layers.\1.\2.\3'),
    (r'layers\.(\d+)\.ffn\.layers\.(0\.0|1)\.(weight|bias)',
     r'layers.\1.ffn.layers.\2.\3'),
    (r'ln1\.(weight|bias)', r'ln1.\1'),
]


def _as_hw(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    if len(size) != 2:
        raise ValueError(f'img_size must be an int or (h, w), got {size}')
    return int(size[0]), int(size[1])


def encoder_state_dict(state_dict: Dict[str, torch.Tensor],
                       encoder: str = 'online') -> Dict[str, torch.Tensor]:
    """The chosen encoder's weights with its prefix removed.

    Args:
        state_dict (dict): An M3I model state dict, or a checkpoint dict
            holding it under ``'state_dict'``.
        encoder (str): ``'online'`` (``backbone.``) or ``'momentum'``
            (``image_target.ema.module.``).

    Returns:
        OrderedDict: Bare backbone keys -> tensors.

    Raises:
        KeyError: No key starts with the encoder's prefix.
    """
    if encoder not in ENCODER_PREFIXES:
        raise ValueError(f'encoder must be one of {sorted(ENCODER_PREFIXES)},'
                         f' got {encoder!r}')
    if isinstance(state_dict.get('state_dict'), dict):
        state_dict = state_dict['state_dict']
    src = ENCODER_PREFIXES[encoder]
    out = OrderedDict(
        (k[len(src):], v) for k, v in state_dict.items() if k.startswith(src))
    if not out:
        found = sorted({k.split('.')[0] for k in state_dict})
        raise KeyError(
            f'no "{src}" keys for the {encoder} encoder in the checkpoint '
            f'(top-level modules found: {found})')
    return out


def dropped_modules(state_dict: Dict[str, torch.Tensor],
                    encoder: str = 'online') -> Dict[str, int]:
    """Number of dropped tensors per top-level module (for the log).

    Args:
        state_dict (dict): The M3I state dict (or checkpoint dict).
        encoder (str): The kept encoder.

    Returns:
        dict[str, int]: e.g. ``{'image_decoder': 52, 'mixer': 0, ...}``.
    """
    if isinstance(state_dict.get('state_dict'), dict):
        state_dict = state_dict['state_dict']
    src = ENCODER_PREFIXES[encoder]
    ema = ENCODER_PREFIXES['momentum']
    return dict(
        Counter(ema[:-1] if k.startswith(ema) else k.split('.')[0]
                for k in state_dict if not k.startswith(src)))


def relative_position_table_size(grid: Tuple[int, int]) -> int:
    """Rows of a BEiT relative position bias table for a patch grid.

    Args:
        grid (tuple[int, int]): Patch grid (h, w).

    Returns:
        int: ``(2h - 1) * (2w - 1) + 3`` (the 3 extra rows hold the class
        token's biases).
    """
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


def convert(state_dict: Dict[str, torch.Tensor],
            encoder: str = 'online',
            layout: str = 'mmpretrain',
            img_size: Optional[Union[int, Sequence[int]]] = None,
            prefix: Optional[str] = None,
            rel_pos_heads: Optional[int] = None,
            window_size: int = 14,
            global_attn_indexes: Optional[Sequence[int]] = None
            ) -> 'OrderedDict[str, torch.Tensor]':
    """Convert an M3I state dict to a downstream ViT backbone state dict.

    Args:
        state_dict (dict): The M3I state dict (or checkpoint dict).
        encoder (str): ``'online'`` or ``'momentum'``. Defaults to online.
        layout (str): ``'mmpretrain'`` (mmpretrain ``VisionTransformer`` /
            ``BEiTViT`` names) or ``'mmseg'`` (mmseg ``VisionTransformer``).
        img_size (int | tuple, optional): Downstream input size; the
            position embedding is resized (bicubic) to its patch grid.
            Defaults to keeping the pre-training size.
        prefix (str, optional): Prefix of the output keys. Defaults to
            ``'backbone.'`` for ``mmpretrain`` and ``''`` for ``mmseg``.
        rel_pos_heads (int, optional): Add zero relative position bias
            tables with this many heads to every layer (``mmpretrain``
            layout, for ``BEiTViT(use_rel_pos_bias=True)``); for
            ``'vitdet'`` the number of heads of the zero decomposed tables.
        window_size (int): ``'vitdet'`` only: window of the non-global
            blocks (0: all global). Defaults to 14.
        global_attn_indexes (Sequence[int], optional): ``'vitdet'`` only:
            global-attention blocks; defaults to ViTSAM's for 12, 24 and 32
            blocks.

    Returns:
        OrderedDict: Downstream keys -> tensors.
    """
    if layout not in DEFAULT_PREFIXES:
        raise ValueError(f'layout must be one of {sorted(DEFAULT_PREFIXES)}, '
                         f'got {layout!r}')
    if rel_pos_heads is not None and layout == 'mmseg':
        raise ValueError('rel_pos_heads needs layout="mmpretrain" '
                         "(mmseg's VisionTransformer has no relative "
                         'position tables)')
    prefix = DEFAULT_PREFIXES[layout] if prefix is None else prefix
    backbone = encoder_state_dict(state_dict, encoder)

    grid, extra = None, 0
    if img_size is not None or rel_pos_heads is not None or \
            layout == 'vitdet':
        for key in ('pos_embed', 'patch_embed.projection.weight'):
            if key not in backbone:
                raise KeyError(
                    f'"{ENCODER_PREFIXES[encoder]}{key}" is missing: '
                    f'img_size and rel_pos_heads need a ViT backbone')
        patch = tuple(backbone['patch_embed.projection.weight'].shape[-2:])
        extra = 1 if 'cls_token' in backbone else 0
        length = backbone['pos_embed'].shape[1] - extra
        side = int(round(length**0.5))
        if side * side != length:
            raise ValueError(f'pos_embed has {length} patch positions, not a '
                             f'square grid')
        grid = (side, side)
    if img_size is not None:
        from mmpretrain.models.utils import resize_pos_embed
        h, w = _as_hw(img_size)
        if h % patch[0] or w % patch[1]:
            raise ValueError(f'img_size {(h, w)} is not divisible by the '
                             f'patch size {patch}')
        new_grid = (h // patch[0], w // patch[1])
        backbone['pos_embed'] = resize_pos_embed(
            backbone['pos_embed'], grid, new_grid, mode='bicubic',
            num_extra_tokens=extra)
        grid = new_grid
    if rel_pos_heads is not None and layout == 'mmpretrain':
        ref = backbone['pos_embed']
        for i in _layer_indices(backbone):
            backbone[f'layers.{i}.attn.relative_position_bias_table'] = \
                ref.new_zeros(relative_position_table_size(grid),
                              rel_pos_heads)

    if layout == 'vitdet':
        backbone = _vitdet_state(backbone, encoder, grid, extra,
                                 rel_pos_heads, window_size,
                                 global_attn_indexes)
    elif layout == 'mmseg':
        backbone = OrderedDict(
            (_mmseg_key(k, encoder), v) for k, v in backbone.items())
    return OrderedDict((prefix + k, v) for k, v in backbone.items())


def _vitdet_state(backbone: Dict[str, torch.Tensor], encoder: str,
                  grid: Tuple[int, int], extra: int,
                  rel_pos_heads: Optional[int], window_size: int,
                  global_attn_indexes: Optional[Sequence[int]]
                  ) -> 'OrderedDict[str, torch.Tensor]':
    """mmpretrain ViT keys (pos_embed already on ``grid``) -> ViTDet keys."""
    out = OrderedDict()
    for key, value in backbone.items():
        if _VITDET_DROPPED.fullmatch(key):
            continue
        if not _VITDET_KEPT.fullmatch(key):
            raise KeyError(f'"{ENCODER_PREFIXES[encoder]}{key}" has no '
                           f"counterpart in ViTDet (layout='vitdet' converts "
                           f'plain mmpretrain ViTs without layer scale)')
        if key == 'pos_embed':  # (1, extra + h * w, C) -> (1, h, w, C)
            value = value[:, extra:].reshape(1, *grid, value.shape[-1])
        out[key] = value
    if rel_pos_heads is None:
        return out
    layers = _layer_indices(out)
    if global_attn_indexes is None:
        if len(layers) not in VITDET_GLOBAL_ATTN:
            raise ValueError(
                f'{len(layers)} blocks: pass global_attn_indexes '
                f'(defaults exist for {sorted(VITDET_GLOBAL_ATTN)} blocks)')
        global_attn_indexes = VITDET_GLOBAL_ATTN[len(layers)]
    dims = out['pos_embed'].shape[-1]
    if dims % rel_pos_heads:
        raise ValueError(f'{dims} channels do not split into '
                         f'rel_pos_heads={rel_pos_heads} heads')
    for i in layers:
        windowed = window_size > 0 and i not in global_attn_indexes
        sides = (window_size, window_size) if windowed else grid
        for axis, side in zip('hw', sides):
            out[f'layers.{i}.attn.rel_pos_{axis}'] = \
                out['pos_embed'].new_zeros(2 * side - 1,
                                           dims // rel_pos_heads)
    return out


def _layer_indices(keys) -> List[int]:
    """Sorted block indices ``i`` of the ``layers.i.*`` keys."""
    return sorted({
        int(m.group(1))
        for m in map(re.compile(r'layers\.(\d+)\.').match, keys) if m
    })


def _mmseg_key(key: str, encoder: str) -> str:
    for pattern, repl in _MMSEG_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(repl)
    raise KeyError(f'"{ENCODER_PREFIXES[encoder]}{key}" has no counterpart in '
                   f"mmseg's VisionTransformer (layout='mmseg' converts "
                   f"mmpretrain ViT backbones only)")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Extract a downstream backbone from an M3I checkpoint')
    parser.add_argument('src', help='M3I pre-training checkpoint')
    parser.add_argument('dst', help='output backbone checkpoint')
    parser.add_argument(
        '--encoder', choices=sorted(ENCODER_PREFIXES), default='online',
        help='online encoder (backbone.) or momentum encoder '
        '(image_target.ema.module.)')
    parser.add_argument(
        '--layout', choices=sorted(DEFAULT_PREFIXES), default='mmpretrain',
        help='key names of the downstream backbone class')
    parser.add_argument(
        '--img-size', type=int, nargs='+',
        help='downstream input size (one int or H W): resize pos_embed')
    parser.add_argument(
        '--prefix', help='output key prefix (default: backbone. for '
        'mmpretrain, empty for mmseg)')
    parser.add_argument(
        '--rel-pos-heads', type=int,
        help='add zero relative position bias tables with this many heads '
        '(for BEiTViT(use_rel_pos_bias=True); vitdet: zero decomposed '
        'tables for this many heads)')
    parser.add_argument(
        '--window-size', type=int, default=14,
        help='vitdet: window size of the non-global blocks')
    parser.add_argument(
        '--global-attn-indexes', type=int, nargs='+',
        help='vitdet: global-attention blocks (default: 2 5 8 11 for ViT-B)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line entry point (see the module docstring)."""
    args = parse_args(argv)
    import m3i_mm  # noqa: F401  (checkpoints parsed as data, atomic writes)
    from mmengine.runner import CheckpointLoader, save_checkpoint
    checkpoint = CheckpointLoader.load_checkpoint(args.src, map_location='cpu')
    state_dict = convert(
        checkpoint,
        encoder=args.encoder,
        layout=args.layout,
        img_size=args.img_size,
        prefix=args.prefix,
        rel_pos_heads=args.rel_pos_heads,
        window_size=args.window_size,
        global_attn_indexes=args.global_attn_indexes)
    meta = dict(
        converted_from=str(args.src),
        encoder=args.encoder,
        layout=args.layout,
        img_size=list(args.img_size) if args.img_size else None)
    save_checkpoint(dict(state_dict=state_dict, meta=meta), args.dst)
    dropped = dropped_modules(checkpoint, args.encoder)
    print(f'{args.dst}: {len(state_dict)} tensors of the {args.encoder} '
          f'encoder ({args.layout} layout); dropped: '
          + ', '.join(f'{k} ({n})' for k, n in sorted(dropped.items())))


if __name__ == '__main__':
    main()
