"""Convert an official InternImage checkpoint to the m3i_mm layout.

Official checkpoints (OpenGVLab/InternImage, classification: ``{'model':
state_dict}``; detection/segmentation: ``{'state_dict': ...}`` with the
backbone under ``backbone.``) name modules after the official code
(``patch_embed``, ``levels.i.blocks.j``, ``dcn.dw_conv.1.1``, ``gamma1``,
``conv_head``, ``clip_projector``, ...). m3i_mm's
:class:`~m3i_mm.models.backbones.internimage.InternImage` has the same
parameters under other names; this tool renames them with the rules below,
one per module type, and fails on any official backbone key that no rule
covers.

Output: a ``{'state_dict': ...}`` checkpoint with the backbone under
``backbone.`` and the official classifier as ``head.fc.`` (an mmpretrain
``ImageClassifier`` with ``LinearClsHead``); other keys (detection and
segmentation necks and heads) are kept as they are. Load the backbone
elsewhere with ``init_cfg=dict(type='Pretrained', checkpoint=...,
prefix='backbone.')``.

Usage::

    python tools/model_converters/internimage_official_to_m3i.py \\
        internimage_t_1k_224.pth internimage-t_m3i.pth
"""
import argparse
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from torch import Tensor

# Official module path -> ours, per module type. Each rule is a regular
# expression matched against the whole key (after ``backbone.``, if any).
# The official code wraps norms in nn.Sequential (LN at index 0 in blocks,
# at index 1 after a channels-first -> channels-last permute in the stem,
# downsampling and DCNv3), which we do not.
_NORM = r'(?P<norm>norm[12]|res_post_norm[12])'
_PARAM = r'(?P<param>weight|bias)'
_BN_PARAM = r'(?P<param>weight|bias|running_mean|running_var|' \
            r'num_batches_tracked)'
BLOCK_RULES: List[Tuple[str, str]] = [
    (rf'{_NORM}\.0\.{_PARAM}', r'\g<norm>.\g<param>'),
    (r'gamma(?P<i>[12])', r'ls\g<i>.weight'),
    (rf'mlp\.fc1\.{_PARAM}', r'mlp.layers.0.0.\g<param>'),
    (rf'mlp\.fc2\.{_PARAM}', r'mlp.layers.1.\g<param>'),
    (rf'dcn\.dw_conv\.0\.{_PARAM}', r'dcn.dw_conv.\g<param>'),
    (rf'dcn\.dw_conv\.1\.1\.{_PARAM}', r'dcn.dw_norm.\g<param>'),
    (rf'dcn\.(?P<layer>offset|mask|input_proj|output_proj)\.{_PARAM}',
     r'dcn.\g<layer>.\g<param>'),
    (rf'dcn\.center_feature_scale_proj_{_PARAM}',
     r'dcn.center_feature_scale_proj.\g<param>'),
]
STAGE_RULES: List[Tuple[str, str]] = [
    (rf'norm\.0\.{_PARAM}', r'norm.\g<param>'),
    (rf'post_norms\.(?P<k>\d+)\.0\.{_PARAM}', r'post_norms.\g<k>.\g<param>'),
    (rf'downsample\.conv\.{_PARAM}', r'downsample.conv.\g<param>'),
    (rf'downsample\.norm\.1\.{_PARAM}', r'downsample.norm.\g<param>'),
]
BACKBONE_RULES: List[Tuple[str, str]] = [
    (rf'patch_embed\.(?P<conv>conv[12])\.{_PARAM}',
     r'stem.\g<conv>.\g<param>'),
    (rf'patch_embed\.(?P<norm>norm[12])\.1\.{_PARAM}',
     r'stem.\g<norm>.\g<param>'),
    # T to XL classification projection: Conv2d, then BN in a Sequential
    (r'conv_head\.0\.weight', r'cls_proj.conv.weight'),
    (rf'conv_head\.1\.0\.{_BN_PARAM}', r'cls_proj.bn.\g<param>'),
    # H clip projector
    (rf'dcnv3_head_x4\.0\.{_PARAM}', r'cls_proj.proj_x4.\g<param>'),
    (rf'dcnv3_head_x3\.{_PARAM}', r'cls_proj.proj_x3.\g<param>'),
    (rf'clip_projector\.norm1_(?P<t>[qkv])\.0\.{_PARAM}',
     r'cls_proj.attn_pool.norm_\g<t>.\g<param>'),
    (r'clip_projector\.cross_dcn\.(?P<t>[qkv])\.weight',
     r'cls_proj.attn_pool.\g<t>.weight'),
    (r'clip_projector\.cross_dcn\.(?P<t>[qkv])_bias',
     r'cls_proj.attn_pool.\g<t>.bias'),
    (rf'clip_projector\.cross_dcn\.proj\.{_PARAM}',
     r'cls_proj.attn_pool.proj.\g<param>'),
    (rf'fc_norm\.0\.{_PARAM}', r'cls_proj.norm.\g<param>'),
]
# Official module roots that belong to the backbone.
BACKBONE_ROOTS = ('patch_embed.', 'levels.', 'conv_head.', 'dcnv3_head_x4.',
                  'dcnv3_head_x3.', 'clip_projector.', 'fc_norm.')
CLASSIFIER_RULE = (rf'head\.{_PARAM}', r'head.fc.\g<param>')


def _apply(rules: List[Tuple[str, str]], key: str) -> Optional[str]:
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(replacement)
    return None


def convert_backbone_key(key: str) -> str:
    """Rename one official backbone key (without ``backbone.``).

    Raises:
        KeyError: If no rule covers ``key``.
    """
    block = re.fullmatch(r'levels\.(\d+)\.blocks\.(\d+)\.(.*)', key)
    level = re.fullmatch(r'levels\.(\d+)\.(.*)', key)
    if block:
        prefix = f'stages.{block.group(1)}.blocks.{block.group(2)}.'
        new = _apply(BLOCK_RULES, block.group(3))
    elif level:
        prefix = f'stages.{level.group(1)}.'
        new = _apply(STAGE_RULES, level.group(2))
    else:
        prefix, new = '', _apply(BACKBONE_RULES, key)
    if new is None:
        raise KeyError(f'official InternImage key {key!r} matches no rule')
    return prefix + new


def convert_internimage(state_dict: Dict[str, Tensor]) -> OrderedDict:
    """Convert an official InternImage state dict to the m3i_mm layout.

    Args:
        state_dict (dict): Official keys, bare (classification) or under
            ``backbone.`` (detection, segmentation); ``module.`` is dropped.

    Returns:
        OrderedDict: Backbone under ``backbone.``, the official classifier
        ``head`` as ``head.fc``, other keys unchanged.
    """
    converted = OrderedDict()
    for key, value in state_dict.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        bare = key[len('backbone.'):] if key.startswith('backbone.') else key
        if bare.startswith(BACKBONE_ROOTS):
            new = 'backbone.' + convert_backbone_key(bare)
        elif key == bare:
            new = _apply([CLASSIFIER_RULE], key) or key
        else:
            new = key
        if new in converted:
            raise KeyError(f'two official keys map to {new!r}')
        converted[new] = value
    return converted


def load_official_state_dict(path: str) -> Dict[str, Tensor]:
    """Read an official checkpoint; picks ``model`` or ``state_dict``.

    Parsed as data like every checkpoint m3i_mm reads
    (:mod:`m3i_mm.engine.checkpoint.parser`), unless the user trusts the file
    and sets ``M3I_TRUST_CHECKPOINTS=1`` (official training checkpoints also
    pickle their config and optimizer objects).

    Raises:
        UnsafeCheckpointError: The file holds an object the parser does not
            build; the message names the file and the object.
    """
    from m3i_mm.engine.checkpoint import load_checkpoint_file
    checkpoint = load_checkpoint_file(path, map_location='cpu')
    for field in ('model', 'state_dict'):
        if isinstance(checkpoint, dict) and field in checkpoint:
            return checkpoint[field]
    return checkpoint


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official InternImage checkpoint')
    parser.add_argument('dst', help='output checkpoint (m3i_mm layout)')
    parser.add_argument(
        '--backbone-only',
        action='store_true',
        help='keep only the backbone, without the backbone. prefix')
    args = parser.parse_args(argv)
    import m3i_mm  # noqa: F401  (allow-listed loading, atomic writes)
    state_dict = convert_internimage(
        load_official_state_dict(args.src))
    if args.backbone_only:
        state_dict = OrderedDict((key[len('backbone.'):], value)
                                 for key, value in state_dict.items()
                                 if key.startswith('backbone.'))
    from mmengine.runner import save_checkpoint
    save_checkpoint({'state_dict': state_dict}, args.dst)  # atomic write
    print(f'converted {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    main()
