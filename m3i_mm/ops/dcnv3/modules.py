"""The DCNv3 module of InternImage."""
from typing import Optional

import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor

from m3i_mm.registry import MODELS
from .dispatch import BACKENDS, dcnv3_core


@MODELS.register_module()
class DCNv3(BaseModule):
    """Deformable convolution v3 (`InternImage
    <https://arxiv.org/abs/2211.05778>`_), channels-last.

    The input is projected (``input_proj``); a depthwise conv + norm +
    activation branch predicts, per channel group, sampling offsets and a
    mask softmax-normalised over the kernel points; the DCNv3 core samples
    the projected input and ``output_proj`` mixes the groups. With
    ``center_feature_scale`` a per-group sigmoid gate blends the sampled
    features with the projected input at the centre.

    Args:
        channels (int): Input and output channels. Defaults to 64.
        kernel_size (int): Size of the sampling kernel. Defaults to 3.
        dw_kernel_size (int, optional): Kernel size of the depthwise conv
            that predicts offsets and mask. Defaults to ``kernel_size``.
        stride (int): Must be 1 (offsets are predicted at input size).
            Defaults to 1.
        pad (int): Zero padding; ``2 * pad == dilation * (kernel_size - 1)``
            keeps the size. Defaults to 1.
        dilation (int): Dilation of the kernel grid. Defaults to 1.
        group (int): Channel groups with their own offsets and mask.
            Defaults to 4.
        offset_scale (float): Scale of the kernel grid and offsets.
            Defaults to 1.0.
        act_cfg (dict): Activation of the offset branch.
            Defaults to ``dict(type='GELU')``.
        norm_cfg (dict): Norm of the offset branch, applied channels-last.
            Defaults to ``dict(type='LN', eps=1e-6)``.
        center_feature_scale (bool): Gate the output with the projected
            input. Defaults to False.
        remove_center (bool): Drop the kernel centre point. Defaults to False.
        backend (str): DCNv3 core backend, see
            :func:`m3i_mm.ops.dcnv3_core`. Defaults to ``'auto'``.
        init_cfg (dict, optional): Initialization config. Defaults to None.
    """

    def __init__(self,
                 channels: int = 64,
                 kernel_size: int = 3,
                 dw_kernel_size: Optional[int] = None,
                 stride: int = 1,
                 pad: int = 1,
                 dilation: int = 1,
                 group: int = 4,
                 offset_scale: float = 1.0,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 center_feature_scale: bool = False,
                 remove_center: bool = False,
                 backend: str = 'auto',
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if channels % group != 0:
            raise ValueError(f'DCNv3: channels ({channels}) must be divisible'
                             f' by group ({group})')
        if stride != 1 or 2 * pad != dilation * (kernel_size - 1):
            raise ValueError(
                'DCNv3 module keeps the spatial size: it needs stride=1 and '
                '2*pad == dilation*(kernel_size-1), got stride='
                f'{stride}, pad={pad}, dilation={dilation}, '
                f'kernel_size={kernel_size}')
        if remove_center and kernel_size % 2 == 0:
            raise ValueError('DCNv3: remove_center needs an odd kernel_size, '
                             f'got {kernel_size}')
        if backend not in BACKENDS:
            raise ValueError(f'DCNv3: backend must be one of {BACKENDS}, got '
                             f'{backend!r}')
        dw_kernel_size = dw_kernel_size or kernel_size
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = offset_scale
        self.center_feature_scale = center_feature_scale
        self.remove_center = remove_center
        self.backend = backend
        points = kernel_size * kernel_size - int(remove_center)

        self.dw_conv = nn.Conv2d(
            channels,
            channels,
            dw_kernel_size,
            padding=(dw_kernel_size - 1) // 2,
            groups=channels)
        self.dw_norm = build_norm_layer(norm_cfg, channels)[1]
        self.dw_act = build_activation_layer(act_cfg)
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj = nn.Linear(channels, group)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: zero offsets and uniform mask, Xavier projections.
        """
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.center_feature_scale:
            nn.init.zeros_(self.center_feature_scale_proj.weight)
            nn.init.zeros_(self.center_feature_scale_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply DCNv3.

        Args:
            x (Tensor): ``(N, H, W, channels)``.

        Returns:
            Tensor: ``(N, H, W, channels)``.
        """
        if x.dim() != 4 or x.shape[-1] != self.channels:
            raise ValueError(f'DCNv3: expected (N, H, W, {self.channels}) '
                             f'input, got shape {tuple(x.shape)}')
        n, height, width, _ = x.shape
        x_proj = self.input_proj(x)

        # offset and mask branch: depthwise conv on channels-first
        feat = self.dw_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        feat = self.dw_act(self.dw_norm(feat))
        offset = self.offset(feat)
        mask = self.mask(feat).view(n, height, width, self.group, -1)
        mask = mask.softmax(-1).view(n, height, width, -1)

        out = dcnv3_core(x_proj, offset, mask, self.kernel_size,
                         self.kernel_size, self.stride, self.stride, self.pad,
                         self.pad, self.dilation, self.dilation, self.group,
                         self.group_channels, self.offset_scale,
                         self.remove_center, self.backend)
        if self.center_feature_scale:
            # per-group gate between sampled and projected features
            gate = self.center_feature_scale_proj(feat).sigmoid()
            gate = gate.repeat_interleave(self.group_channels, dim=-1)
            out = out * (1 - gate) + x_proj * gate
        return self.output_proj(out)
