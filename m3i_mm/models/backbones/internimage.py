"""InternImage backbone (`InternImage: Exploring Large-Scale Vision Foundation
Models with Deformable Convolutions <https://arxiv.org/abs/2211.05778>`_).

A four-stage hierarchy (strides 4, 8, 16, 32) of DCNv3 + MLP blocks working
channels-last. Variants T to XL follow the official classification configs;
InternImage-H adds residual post-norms, extra post-norms in stage 3,
centre feature scaling, a 5x5 offset branch and an attention-pooling "clip
projector" head. One implementation serves mmpretrain (``out_indices=(4,)``:
the classification projection), mmdet and mmseg (stage outputs, NCHW) and
M3I's InternImage-H pre-training (``out_indices=(5,)``: the clip projector's
fused stride-16 map).
"""
import copy
from typing import List, Optional, Sequence, Tuple, Union

import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import ConvModule, build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmcv.cnn.bricks.transformer import FFN
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.models.utils import LayerScale
from torch import Tensor

from m3i_mm.ops import DCNv3
from m3i_mm.registry import register_backbone

__all__ = ['InternImage']


class InternImageStem(nn.Module):
    """Two stride-2 3x3 convs with norm; NCHW in, NHWC out (stride 4).

    Args:
        in_channels (int): Image channels.
        out_channels (int): Output channels (half of them after conv1).
        act_cfg (dict): Activation config.
        norm_cfg (dict): Norm config, applied channels-last.
    """

    def __init__(self, in_channels: int, out_channels: int, act_cfg: dict,
                 norm_cfg: dict) -> None:
        super().__init__()
        mid_channels = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, 2, 1)
        self.norm1 = build_norm_layer(norm_cfg, mid_channels)[1]
        self.act = build_activation_layer(act_cfg)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, 2, 1)
        self.norm2 = build_norm_layer(norm_cfg, out_channels)[1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.conv1(x).permute(0, 2, 3, 1)))
        x = self.conv2(x.permute(0, 3, 1, 2))
        return self.norm2(x.permute(0, 2, 3, 1))


class InternImageDownsample(nn.Module):
    """Stride-2 3x3 conv doubling the channels, then norm; NHWC in and out.

    Args:
        channels (int): Input channels.
        norm_cfg (dict): Norm config, applied channels-last.
    """

    def __init__(self, channels: int, norm_cfg: dict) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, 2, 1, bias=False)
        self.norm = build_norm_layer(norm_cfg, 2 * channels)[1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.permute(0, 3, 1, 2))
        return self.norm(x.permute(0, 2, 3, 1))


class InternImageBlock(BaseModule):
    """DCNv3 + MLP block, channels-last.

    Pre-norm by default: ``x + ls(dcn(norm1(x)))``. ``post_norm`` normalises
    the branch output instead (``x + ls(norm1(dcn(x)))``, S to XL);
    ``res_post_norm`` adds a norm after each pre-normed branch (H).

    Args:
        channels (int): Channels.
        group (int): DCNv3 groups.
        mlp_ratio (float): MLP hidden size ratio. Defaults to 4.
        drop_rate (float): MLP dropout. Defaults to 0.
        drop_path_rate (float): Stochastic depth. Defaults to 0.
        act_cfg (dict): Activation config. Defaults to GELU.
        norm_cfg (dict): Norm config. Defaults to LN (eps 1e-6).
        post_norm (bool): Post-norm branches. Defaults to False.
        res_post_norm (bool): Norm after pre-normed branches. Defaults to
            False.
        layer_scale (float, optional): Init value of the branch scales;
            None for no layer scale. Defaults to None.
        offset_scale (float): DCNv3 offset scale. Defaults to 1.
        dw_kernel_size (int, optional): DCNv3 offset-branch kernel size.
        center_feature_scale (bool): DCNv3 centre feature scale.
        remove_center (bool): DCNv3 without the kernel centre.
        with_cp (bool): Activation checkpointing. Defaults to False.
        dcn_backend (str): DCNv3 core backend. Defaults to ``'auto'``.
    """

    def __init__(self,
                 channels: int,
                 group: int,
                 mlp_ratio: float = 4.,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 post_norm: bool = False,
                 res_post_norm: bool = False,
                 layer_scale: Optional[float] = None,
                 offset_scale: float = 1.0,
                 dw_kernel_size: Optional[int] = None,
                 center_feature_scale: bool = False,
                 remove_center: bool = False,
                 with_cp: bool = False,
                 dcn_backend: str = 'auto') -> None:
        super().__init__()
        if post_norm and res_post_norm:
            raise ValueError('InternImage: post_norm and res_post_norm are '
                             'exclusive')
        self.post_norm = post_norm
        self.res_post_norm = res_post_norm
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, channels)[1]
        self.dcn = DCNv3(
            channels=channels,
            kernel_size=3,
            dw_kernel_size=dw_kernel_size,
            stride=1,
            pad=1,
            dilation=1,
            group=group,
            offset_scale=offset_scale,
            act_cfg=act_cfg,
            norm_cfg=norm_cfg,
            center_feature_scale=center_feature_scale,
            remove_center=remove_center,
            backend=dcn_backend)
        self.norm2 = build_norm_layer(norm_cfg, channels)[1]
        self.mlp = FFN(
            embed_dims=channels,
            feedforward_channels=int(channels * mlp_ratio),
            act_cfg=act_cfg,
            ffn_drop=drop_rate,
            add_identity=False)
        if layer_scale is None:
            self.ls1, self.ls2 = nn.Identity(), nn.Identity()
        else:
            self.ls1 = LayerScale(channels, layer_scale)
            self.ls2 = LayerScale(channels, layer_scale)
        if res_post_norm:
            self.res_post_norm1 = build_norm_layer(norm_cfg, channels)[1]
            self.res_post_norm2 = build_norm_layer(norm_cfg, channels)[1]
        self.drop_path = DropPath(
            drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _forward(self, x: Tensor) -> Tensor:
        if self.post_norm:
            x = x + self.drop_path(self.ls1(self.norm1(self.dcn(x))))
            return x + self.drop_path(self.ls2(self.norm2(self.mlp(x))))
        y = self.dcn(self.norm1(x))
        if self.res_post_norm:
            y = self.res_post_norm1(y)
        x = x + self.drop_path(self.ls1(y))
        y = self.mlp(self.norm2(x))
        if self.res_post_norm:
            y = self.res_post_norm2(y)
        return x + self.drop_path(self.ls2(y))

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class InternImageStage(BaseModule):
    """Blocks, optional extra post-norms, final norm, then downsampling.

    Args:
        channels (int): Channels.
        depth (int): Number of blocks.
        downsample (bool): End with a stride-2 downsampling layer.
        norm_cfg (dict): Norm config.
        final_norm (bool): Norm the stage output (before downsampling).
        post_norm_block_ids (Sequence[int], optional): Blocks followed by an
            extra norm (stage 3 of InternImage-H).
        block_cfgs (Sequence[dict]): Keyword arguments of each block.
    """

    def __init__(self, channels: int, depth: int, downsample: bool,
                 norm_cfg: dict, final_norm: bool,
                 post_norm_block_ids: Optional[Sequence[int]],
                 block_cfgs: Sequence[dict]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            InternImageBlock(channels=channels, norm_cfg=norm_cfg, **cfg)
            for cfg in block_cfgs
        ])
        self.post_norm_block_ids = list(post_norm_block_ids or [])
        if any(i < 0 or i >= depth for i in self.post_norm_block_ids):
            raise ValueError(f'InternImage: post_norm_block_ids '
                             f'{self.post_norm_block_ids} out of a stage of '
                             f'depth {depth}')
        self.post_norms = nn.ModuleList([
            build_norm_layer(norm_cfg, channels)[1]
            for _ in self.post_norm_block_ids
        ])
        self.norm = build_norm_layer(
            norm_cfg, channels)[1] if final_norm else nn.Identity()
        self.downsample = InternImageDownsample(
            channels, norm_cfg) if downsample else None

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Returns the stage output and the downsampled input of the next."""
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.post_norm_block_ids:
                x = self.post_norms[self.post_norm_block_ids.index(i)](x)
        out = self.norm(x)
        if self.downsample is not None:
            return out, self.downsample(out)
        return out, out


class AttentionPooling(nn.Module):
    """Attention pooling: the mean token attends to all tokens.

    Args:
        embed_dims (int): Token channels.
        num_heads (int): Attention heads.
        out_dims (int): Output channels.
        norm_cfg (dict): Norm config of query, key and value.
    """

    def __init__(self, embed_dims: int, num_heads: int, out_dims: int,
                 norm_cfg: dict) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f'InternImage: clip embed dims {embed_dims} not '
                             f'divisible by {num_heads} heads')
        self.num_heads = num_heads
        self.norm_q = build_norm_layer(norm_cfg, embed_dims)[1]
        self.norm_k = build_norm_layer(norm_cfg, embed_dims)[1]
        self.norm_v = build_norm_layer(norm_cfg, embed_dims)[1]
        self.q = nn.Linear(embed_dims, embed_dims)
        self.k = nn.Linear(embed_dims, embed_dims)
        self.v = nn.Linear(embed_dims, embed_dims)
        self.proj = nn.Linear(embed_dims, out_dims)

    def forward(self, x: Tensor) -> Tensor:
        """(N, L, C) tokens to (N, out_dims)."""
        n = x.shape[0]
        heads = (n, -1, self.num_heads, x.shape[-1] // self.num_heads)
        q = self.q(self.norm_q(x.mean(1, keepdim=True)))
        k = self.k(self.norm_k(x))
        v = self.v(self.norm_v(x))
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, -1))


class ClipProjector(nn.Module):
    """InternImage-H classification head before the linear classifier.

    Stage 4 (1x1 conv + pixel shuffle to stage-3 size) plus stage 3 (1x1
    conv): a fused map at stride 16 (:meth:`fuse`); attention-pooled to one
    vector and normed (:meth:`forward`).

    Args:
        in_channels (Sequence[int]): Channels of stages 3 and 4.
        embed_dims (int): Channels of the fused map.
        num_heads (int): Attention heads.
        out_dims (int): Output channels.
        norm_cfg (dict): Norm config.
        with_pool (bool): Build the attention pooling and its norm; without
            them only :meth:`fuse` is available. Defaults to True.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 embed_dims: int,
                 num_heads: int,
                 out_dims: int,
                 norm_cfg: dict,
                 with_pool: bool = True) -> None:
        super().__init__()
        self.proj_x4 = nn.Conv2d(in_channels[1], embed_dims * 4, 1)
        self.proj_x3 = nn.Conv2d(in_channels[0], embed_dims, 1)
        if with_pool:
            self.attn_pool = AttentionPooling(embed_dims, num_heads,
                                              out_dims, norm_cfg)
            self.norm = build_norm_layer(norm_cfg, out_dims)[1]

    def fuse(self, x3: Tensor, x4: Tensor) -> Tensor:
        """Stage 3 (N, C3, h, w) and stage 4 (N, C4, h/2, w/2) outputs to the
        fused map (N, embed_dims, h, w).

        Raises:
            ValueError: If stage 3 is not twice the size of stage 4.
        """
        x4 = F.pixel_shuffle(self.proj_x4(x4), 2)
        x3 = self.proj_x3(x3)
        if x3.shape != x4.shape:
            raise ValueError(
                'InternImage clip projector: stage 3 size '
                f'{tuple(x3.shape[2:])} is not twice the stage 4 size '
                f'{tuple(x4.shape[2:])}; use inputs divisible by 32')
        return x3 + x4

    def forward(self, x3: Tensor, x4: Tensor) -> Tensor:
        """Stage 3 and 4 outputs (NCHW) to (N, out_dims)."""
        x = self.fuse(x3, x4).flatten(2).transpose(1, 2)
        return self.norm(self.attn_pool(x))


@register_backbone
class InternImage(BaseBackbone):
    """InternImage backbone.

    Outputs are selected by ``out_indices``: 0 to 3 are the stage outputs
    (NCHW, strides 4 to 32, after the stage norm, before downsampling), 4 is
    the classification projection of the official classifiers (a 1x1
    conv + BN + GELU widening stage 4 by ``cls_scale`` for T to XL, the
    attention-pooling clip projector giving an (N, 768) vector for H),
    built only when requested. Arches with the clip projector (H) also have
    5: the projector's fused stage-3 + stage-4 map before the pooling,
    (N, ``clip_embed_dims``, H/16, W/16), 1,024 channels for H: the token
    map M3I pre-trains InternImage-H on (paper Table 7: attention-pooling
    input 1,024; 12x12 tokens at 192 px, the 16-pixel mask patches).

    Args:
        arch (str | dict): A variant of :attr:`arch_zoo` (``'t'``, ``'s'``,
            ``'b'``, ``'l'``, ``'xl'``, ``'h'`` or the long names) or a dict
            with its keys (``channels``, ``depths``, ``groups`` required).
            Defaults to ``'t'``.
        in_channels (int): Image channels. Defaults to 3.
        out_indices (Sequence[int] | int): Outputs, see above; negative
            indices count stages from the end. Raises ``ValueError`` for
            indices out of range, and for 5 without the clip projector.
            Defaults to ``(3, )``.
        mlp_ratio (float): MLP hidden size ratio. Defaults to 4.
        drop_rate (float): MLP dropout. Defaults to 0.
        drop_path_rate (float): Stochastic depth. Defaults to 0.
        drop_path_type (str): ``'linear'`` (rising from 0 to
            ``drop_path_rate`` over the blocks) or ``'uniform'`` (the same
            rate in every block, as M3I pre-trains InternImage-H).
            Defaults to ``'linear'``.
        act_cfg (dict): Activation config. Defaults to GELU.
        norm_cfg (dict): Norm config (channels-last). Defaults to LN with
            eps 1e-6.
        cls_scale (float): Widening of the T to XL classification
            projection. Defaults to 1.5.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k >= 1 the stem
            and the first k stages (with their downsampling). Defaults to -1.
        with_cp (bool): Activation checkpointing of every block. Defaults to
            False.
        dcn_backend (str): DCNv3 core backend (``'auto'``, ``'pytorch'``,
            ``'cuda'``). Defaults to ``'auto'``.
        init_cfg (dict | list[dict], optional): Initialization config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
            Defaults to None (the official initialization).
    """
    # Official classification configs of OpenGVLab/InternImage.
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], dict(
            channels=64, depths=[4, 4, 18, 4], groups=[4, 8, 16, 32],
            offset_scale=1.0)),
        **dict.fromkeys(['s', 'small'], dict(
            channels=80, depths=[4, 4, 21, 4], groups=[5, 10, 20, 40],
            layer_scale=1e-5, offset_scale=1.0, post_norm=True)),
        **dict.fromkeys(['b', 'base'], dict(
            channels=112, depths=[4, 4, 21, 4], groups=[7, 14, 28, 56],
            layer_scale=1e-5, offset_scale=1.0, post_norm=True)),
        **dict.fromkeys(['l', 'large'], dict(
            channels=160, depths=[5, 5, 22, 5], groups=[10, 20, 40, 80],
            layer_scale=1e-5, offset_scale=2.0, post_norm=True)),
        **dict.fromkeys(['xl', 'xlarge'], dict(
            channels=192, depths=[5, 5, 24, 5], groups=[12, 24, 48, 96],
            layer_scale=1e-5, offset_scale=2.0, post_norm=True)),
        **dict.fromkeys(['h', 'huge'], dict(
            channels=320, depths=[6, 6, 32, 6], groups=[10, 20, 40, 80],
            offset_scale=1.0, dw_kernel_size=5, res_post_norm=True,
            level2_post_norm_block_ids=[5, 11, 17, 23, 29],
            center_feature_scale=True, use_clip_projector=True)),
    }  # yapf: disable
    # Defaults of the optional arch keys.
    arch_defaults = dict(
        layer_scale=None,
        offset_scale=1.0,
        post_norm=False,
        res_post_norm=False,
        level2_post_norm_block_ids=None,
        center_feature_scale=False,
        dw_kernel_size=None,
        remove_center=False,
        use_clip_projector=False,
        clip_embed_dims=1024,
        clip_num_heads=16,
        clip_out_dims=768)
    num_stages = 4

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (3, ),
                 mlp_ratio: float = 4.,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 drop_path_type: str = 'linear',
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 cls_scale: float = 1.5,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 dcn_backend: str = 'auto',
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch = arch = self._parse_arch(arch)
        self.out_indices = self._parse_out_indices(out_indices)
        # Stage outputs that forward returns or projects (made NCHW).
        self._nchw_stages = {i for i in self.out_indices if i < 4}
        if 4 in self.out_indices:
            self._nchw_stages |= {2, 3} if arch['use_clip_projector'] else {3}
        if 5 in self.out_indices:
            self._nchw_stages |= {2, 3}
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'InternImage: frozen_stages must be in [-1, '
                             f'{self.num_stages}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        channels = [arch['channels'] * 2**i for i in range(self.num_stages)]
        self.channels = channels

        self.stem = InternImageStem(in_channels, channels[0], act_cfg,
                                    norm_cfg)
        num_blocks = sum(arch['depths'])
        if drop_path_type == 'uniform':
            drop_path = [drop_path_rate] * num_blocks
        elif drop_path_type == 'linear':
            drop_path = [
                drop_path_rate * i / max(num_blocks - 1, 1)
                for i in range(num_blocks)
            ]
        else:
            raise ValueError(f"InternImage: drop_path_type must be 'linear' "
                             f"or 'uniform', got {drop_path_type!r}")
        self.stages = nn.ModuleList()
        for i, depth in enumerate(arch['depths']):
            block_cfg = dict(
                group=arch['groups'][i],
                mlp_ratio=mlp_ratio,
                drop_rate=drop_rate,
                act_cfg=act_cfg,
                post_norm=arch['post_norm'],
                res_post_norm=arch['res_post_norm'],
                layer_scale=arch['layer_scale'],
                offset_scale=arch['offset_scale'],
                dw_kernel_size=arch['dw_kernel_size'],
                center_feature_scale=arch['center_feature_scale'],
                remove_center=arch['remove_center'],
                with_cp=with_cp,
                dcn_backend=dcn_backend)
            first = sum(arch['depths'][:i])
            self.stages.append(
                InternImageStage(
                    channels=channels[i],
                    depth=depth,
                    downsample=i < self.num_stages - 1,
                    norm_cfg=norm_cfg,
                    # official: post-norm models skip it, unless H-like
                    final_norm=(not arch['post_norm']
                                or arch['center_feature_scale']),
                    post_norm_block_ids=(arch['level2_post_norm_block_ids']
                                         if i == 2 else None),
                    block_cfgs=[
                        dict(block_cfg, drop_path_rate=drop_path[first + j])
                        for j in range(depth)
                    ]))

        if arch['use_clip_projector'] and {4, 5} & set(self.out_indices):
            # One projector for both outputs: the same keys as the
            # classifiers' checkpoints; pooling only if 4 is asked for.
            self.cls_proj = ClipProjector(
                channels[2:],
                arch['clip_embed_dims'],
                arch['clip_num_heads'],
                arch['clip_out_dims'],
                norm_cfg,
                with_pool=4 in self.out_indices)
        elif 4 in self.out_indices:
            self.cls_proj = ConvModule(
                channels[3],
                int(channels[3] * cls_scale),
                1,
                bias=False,
                norm_cfg=dict(type='BN'),
                act_cfg=act_cfg)
        self._freeze_stages()

    def _parse_arch(self, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            if arch.lower() not in self.arch_zoo:
                raise ValueError(f'InternImage: unknown arch {arch!r}, '
                                 f'choose from {sorted(self.arch_zoo)}')
            arch = self.arch_zoo[arch.lower()]
        missing = {'channels', 'depths', 'groups'} - set(arch)
        unknown = set(arch) - {'channels', 'depths', 'groups'} - set(
            self.arch_defaults)
        if missing or unknown:
            raise ValueError(f'InternImage: arch dict misses keys '
                             f'{sorted(missing)} / has unknown keys '
                             f'{sorted(unknown)}')
        arch = dict(copy.deepcopy(self.arch_defaults), **arch)
        for key in ('depths', 'groups'):
            if len(arch[key]) != self.num_stages:
                raise ValueError(f'InternImage: arch {key} must have '
                                 f'{self.num_stages} entries, got '
                                 f'{arch[key]}')
        return arch

    def _parse_out_indices(self, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        parsed = []
        last = self.num_stages + int(self.arch['use_clip_projector'])
        for index in out_indices:
            if not -self.num_stages <= index <= last:
                raise ValueError(
                    f'InternImage: out_indices entry {index} not in '
                    f'[-{self.num_stages}, {last}] (5, the fused stage-3+4 '
                    'map, needs an arch with use_clip_projector)')
            parsed.append(index % self.num_stages if index < 0 else index)
        return tuple(parsed)

    def init_weights(self) -> None:
        """The official initialization, or ``init_cfg`` if it is set."""
        super().init_weights()
        if self.init_cfg is not None:
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, DCNv3):
                module.reset_parameters()

    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.stem)
        frozen += list(self.stages[:max(self.frozen_stages, 0)])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'InternImage':
        super().train(mode)
        self._freeze_stages()
        return self

    def get_layer_depth(self, param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Depth of a parameter for layer-wise lr decay.

        The depths of the official InternImage layer-decay constructor: the
        stem 0, block ``j`` of stage ``i`` ``1 + sum(depths[:i]) + j``, the
        norm and downsampling layer that end stage ``i``
        ``1 + sum(depths[:min(i + 1, 3)])`` (as the official code, the last
        stage's norm shares the depth of that stage's first block), the
        classification projection and anything after the backbone
        ``sum(depths) + 1``. Stage 3's extra post-norms (H) take the depth of
        the block they follow.

        Args:
            param_name (str): Parameter name, e.g. of the whole model.
            prefix (str): Prefix of the backbone's parameters in
                ``param_name``. Defaults to ''.

        Returns:
            Tuple[int, int]: The depth and the number of depths
            (``sum(depths) + 2``).
        """
        depths = self.arch['depths']
        num_layers = sum(depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        parts = param_name[len(prefix):].split('.')
        if parts[0] == 'stem':
            return 0, num_layers
        if parts[0] != 'stages':
            return num_layers - 1, num_layers
        stage = int(parts[1])
        if parts[2] == 'blocks':
            return 1 + sum(depths[:stage]) + int(parts[3]), num_layers
        if parts[2] == 'post_norms':
            block = self.stages[stage].post_norm_block_ids[int(parts[3])]
            return 1 + sum(depths[:stage]) + block, num_layers
        last = min(stage + 1, self.num_stages - 1)
        return 1 + sum(depths[:last]), num_layers

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Image (N, C, H, W) to the outputs selected by ``out_indices``."""
        x = self.stem(x)
        stage_outs = []
        for i, stage in enumerate(self.stages):
            out, x = stage(x)
            stage_outs.append(
                out.permute(0, 3, 1, 2).contiguous() if i in
                self._nchw_stages else None)
        outs = []
        for index in self.out_indices:
            if index < self.num_stages:
                outs.append(stage_outs[index])
            elif index == self.num_stages + 1:
                outs.append(self.cls_proj.fuse(stage_outs[2], stage_outs[3]))
            elif self.arch['use_clip_projector']:
                outs.append(self.cls_proj(stage_outs[2], stage_outs[3]))
            else:
                outs.append(self.cls_proj(stage_outs[3]))
        return tuple(outs)
