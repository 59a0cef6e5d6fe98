"""ViTDet's simple feature pyramid from a single stride-16 map."""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.model import BaseModule

__all__ = ['SimpleFPN']


@MMDET_MODELS.register_module()
class SimpleFPN(BaseModule):
    """Simple feature pyramid of ViTDet (Li et al., ECCV 2022, Fig. 2c).

    From the last map of a plain backbone (stride ``s``, ``backbone_channel``
    channels) four scales are made in parallel:

    - ``s / 4``: deconv 2x2 (C -> C/2), norm, GELU, deconv 2x2 (-> C/4),
    - ``s / 2``: deconv 2x2 (C -> C/2),
    - ``s``: identity,
    - ``2 s``: max-pool 2x2,

    each followed by a 1x1 and a 3x3 conv (``out_channels``, with norm, no
    activation). With ``num_outs=5`` one more level is the stride-2 max-pool
    (kernel 1) of the last, as ViTDet's ``LastLevelMaxPool`` for the RPN.

    Args:
        backbone_channel (int): Channels of the backbone map.
        in_channels (Sequence[int]): Channels of the four scales before the
            convs; ``[C/4, C/2, C, C]`` for ViTDet.
        out_channels (int): Channels of every output. Defaults to 256.
        num_outs (int): 4 or 5 outputs. Defaults to 5.
        norm_cfg (dict): Norm after the deconv and the convs; ViTDet uses
            channel-wise LayerNorm (mmpretrain's ``LN2d``). ``GN`` works too.
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 backbone_channel: int,
                 in_channels: Sequence[int],
                 out_channels: int = 256,
                 num_outs: int = 5,
                 norm_cfg: dict = dict(type='mmpretrain.LN2d', eps=1e-6),
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        c = backbone_channel
        expected = [c // 4, c // 2, c, c]
        if list(in_channels) != expected:
            raise ValueError(f'in_channels must be {expected} for '
                             f'backbone_channel={c}, got {list(in_channels)}')
        if num_outs not in (4, 5):
            raise ValueError(f'num_outs must be 4 or 5, got {num_outs}')
        self.backbone_channel = c
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs

        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(c, c // 2, 2, 2),
            build_norm_layer(norm_cfg, c // 2)[1], nn.GELU(),
            nn.ConvTranspose2d(c // 2, c // 4, 2, 2))
        self.fpn2 = nn.ConvTranspose2d(c, c // 2, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for in_c in self.in_channels:
            self.lateral_convs.append(
                ConvModule(in_c, out_channels, 1, norm_cfg=norm_cfg,
                           act_cfg=None, inplace=False))
            self.fpn_convs.append(
                ConvModule(out_channels, out_channels, 3, padding=1,
                           norm_cfg=norm_cfg, act_cfg=None, inplace=False))

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor]:
        """Build the pyramid.

        Args:
            inputs (Sequence[Tensor]): Backbone outputs; the last,
                (B, C, H, W), is used.

        Returns:
            tuple[Tensor]: ``num_outs`` maps with ``out_channels`` channels
            at ``H * 4, H * 2, H, H / 2`` (and ``H / 4``).
        """
        x = inputs[-1]
        if x.shape[1] != self.backbone_channel:
            raise ValueError(f'expected {self.backbone_channel} channels, '
                             f'got a map of shape {tuple(x.shape)}')
        feats: List[torch.Tensor] = [
            fpn(x) for fpn in (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        ]
        outs = [
            fpn_conv(lateral(f)) for f, lateral, fpn_conv in zip(
                feats, self.lateral_convs, self.fpn_convs)
        ]
        if self.num_outs == 5:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
