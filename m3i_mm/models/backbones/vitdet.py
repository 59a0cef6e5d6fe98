"""ViTDet: a plain ViT backbone for detection (Li et al., ECCV 2022).

The ViTDet design is the one of SAM's image encoder, which mmpretrain ships
as :class:`mmpretrain.models.ViTSAM`: a plain ViT on a ``(B, H, W, C)`` token
grid whose blocks use non-overlapping window attention (zero-padded to whole
windows) except a few global-attention blocks (2, 5, 8, 11 for ViT-B), with
decomposed relative position embeddings and an absolute position embedding
stored on the grid of ``img_size`` (resized on the fly for other inputs).
:class:`ViTDet` is a thin subclass that only

- applies stochastic depth to both residual branches, as ViTDet and the
  pre-trained ViT do (ViTSAM's block drops the MLP branch only),
- returns the last (stride-``patch_size``) feature map without SAM's
  channel-reduction neck (the simple feature pyramid is a separate neck,
  :class:`m3i_mm.models.necks.SimpleFPN`),
- lets ``global_attn_indexes`` be set for custom (e.g. tiny) architectures.

:class:`m3i_mm.engine.BackboneLayerDecayOptimWrapperConstructor` applies
mmpretrain's layer-wise lr decay to a detector through
:meth:`ViTDet.get_layer_depth` (embeddings ``rate ** (L + 1)``, block ``i``
``rate ** (L - i)``, neck and heads 1, as ViTDet).
"""
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmcv.cnn.bricks import DropPath
from mmengine.model import ModuleList
from mmpretrain.models.backbones.vit_sam import (TransformerEncoderLayer,
                                                 ViTSAM, window_partition,
                                                 window_unpartition)

from m3i_mm.registry import register_backbone

__all__ = ['ViTDet', 'ViTDetLayer']


class ViTDetLayer(TransformerEncoderLayer):
    """ViTSAM's window/global attention block with stochastic depth on both
    residual branches.

    Args:
        drop_path_rate (float): Stochastic depth rate of both branches.
            Defaults to 0.
        **kwargs: The other arguments of mmpretrain's ViTSAM
            ``TransformerEncoderLayer`` (``embed_dims``, ``num_heads``,
            ``window_size``, ``use_rel_pos``, ``input_size``, ...).
    """

    def __init__(self, drop_path_rate: float = 0., **kwargs) -> None:
        super().__init__(drop_path_rate=drop_path_rate, **kwargs)
        self.drop_path = DropPath(drop_path_rate) \
            if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (Tensor): (B, H, W, C). Returns: Tensor: (B, H, W, C)."""
        shortcut = x
        x = self.ln1(x)
        if self.window_size > 0:
            hw = x.shape[1:3]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, hw)
        x = shortcut + self.drop_path(x)
        # mmcv's FFN adds its own DropPath to the identity.
        return self.ffn(self.ln2(x), identity=x)


@register_backbone
class ViTDet(ViTSAM):
    """Plain ViT backbone of ViTDet, built on mmpretrain's ViTSAM.

    Args:
        arch (str | dict): ``'base'``, ``'large'``, ``'huge'`` (ViTSAM's
            settings, which are ViTDet's) or a dict with ``embed_dims``,
            ``num_layers``, ``num_heads``, ``feedforward_channels`` and
            optionally ``global_attn_indexes``. Defaults to ``'base'``.
        img_size (int | tuple): Detection input size; the absolute position
            embedding is stored on its patch grid. Defaults to 1024.
        patch_size (int): Patch size = output stride. Defaults to 16.
        window_size (int): Window of the non-global blocks; 0 makes every
            block global. Defaults to 14.
        global_attn_indexes (Sequence[int], optional): Blocks with global
            attention; overrides the arch's (ViT-B: 2, 5, 8, 11).
        use_rel_pos (bool): Decomposed relative position embeddings.
            Defaults to True.
        drop_path_rate (float): Stochastic depth, linear over the blocks.
            Defaults to 0.1.
        out_indices (int | Sequence[int]): Blocks whose output is returned.
            Defaults to -1 (the last).
        frozen_stages (int): Freeze the embeddings and this many blocks.
            Defaults to -1.
        init_cfg (dict | list, optional): Initialisation; defaults to
            truncated normal (std 0.02) linears and unit LayerNorms.
        **kwargs: Other ViTSAM arguments (``qkv_bias``, ``norm_cfg``,
            ``use_abs_pos``, ``in_channels``, ``interpolate_mode``, ...).
    """

    def __init__(self,
                 arch: Union[str, dict] = 'base',
                 img_size: Union[int, Tuple[int, int]] = 1024,
                 patch_size: int = 16,
                 window_size: int = 14,
                 global_attn_indexes: Optional[Sequence[int]] = None,
                 use_rel_pos: bool = True,
                 drop_path_rate: float = 0.1,
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: int = -1,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 **kwargs) -> None:
        for key in ('out_channels', 'out_type', 'layer_cfgs'):
            if key in kwargs:
                raise TypeError(f'ViTDet does not take {key!r}: it returns '
                                f'raw (B, C, H, W) maps of its own blocks')
        if isinstance(arch, dict):
            arch = dict(arch)
            arch.setdefault('global_attn_indexes', [])
        elif isinstance(arch, str) and arch.lower() not in self.arch_zoo:
            raise ValueError(f'unknown ViTDet arch {arch!r}; choose from '
                             f'{sorted(self.arch_zoo)} or pass a dict')
        if init_cfg is None:
            init_cfg = [
                dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
                dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
            ]
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=patch_size,
            out_channels=0,
            out_indices=list(out_indices) if isinstance(
                out_indices, Sequence) else out_indices,
            out_type='featmap',
            drop_path_rate=drop_path_rate,
            use_rel_pos=use_rel_pos,
            window_size=window_size,
            frozen_stages=-1,
            init_cfg=init_cfg,
            **kwargs)
        if global_attn_indexes is not None:
            self.global_attn_indexes = list(global_attn_indexes)
        bad = [i for i in self.global_attn_indexes
               if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f'global_attn_indexes {bad} out of range for '
                             f'{self.num_layers} blocks')
        if not hasattr(self, 'pos_embed'):
            self.pos_embed = None  # ViTSAM.init_weights reads it
        self.window_size = window_size

        # Rebuild ViTSAM's blocks as ViTDetLayer (same parameters and names).
        dpr = np.linspace(0, drop_path_rate, self.num_layers).tolist()
        self.layers = ModuleList()
        for i in range(self.num_layers):
            self.layers.append(
                ViTDetLayer(
                    embed_dims=self.embed_dims,
                    num_heads=self.arch_settings['num_heads'],
                    feedforward_channels=self.arch_settings[
                        'feedforward_channels'],
                    drop_rate=kwargs.get('drop_rate', 0.),
                    drop_path_rate=dpr[i],
                    qkv_bias=kwargs.get('qkv_bias', True),
                    norm_cfg=kwargs.get('norm_cfg', dict(type='LN',
                                                         eps=1e-6)),
                    use_rel_pos=use_rel_pos,
                    window_size=0 if i in self.global_attn_indexes else
                    window_size,
                    input_size=self.patch_resolution))
        self.frozen_stages = frozen_stages
        if frozen_stages > 0:
            self._freeze_stages()

    @property
    def window_layers(self) -> List[int]:
        """Indexes of the blocks with window attention."""
        return [i for i, layer in enumerate(self.layers)
                if layer.window_size > 0]

    def _freeze_stages(self) -> None:
        if self.pos_embed is None:  # ViTSAM's version needs drop_after_pos
            self.drop_after_pos = nn.Identity()
        super()._freeze_stages()

    def train(self, mode: bool = True) -> 'ViTDet':
        """Keep frozen blocks in eval mode."""
        super().train(mode)
        if mode and self.frozen_stages > 0:
            self._freeze_stages()
        return self
