"""Image target encoder f_φ: a momentum (EMA) copy of the input backbone."""
import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MessageHub
from torch.distributed.tensor import DTensor

from mmpretrain.models.utils import CosineEMA
from m3i_mm.registry import MODELS


def backbone_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Dense features (N, L, C) of a backbone whose last output is a map.

    The backbone must return (a tuple ending with) an (N, C, h, w) feature
    map, e.g. mmpretrain's ``VisionTransformer(out_type='featmap')``.
    """
    feats = backbone(images)
    feat = feats[-1] if isinstance(feats, (tuple, list)) else feats
    if feat.dim() != 4:
        raise ValueError(
            f'{type(backbone).__name__} must output an (N, C, h, w) feature '
            f'map for dense targets (e.g. out_type="featmap"), got '
            f'{tuple(feat.shape)}')
    return feat.flatten(2).transpose(1, 2)


TARGET_OUTPUTS = ('dense', 'global')


def check_target_output(output: str) -> str:
    """Validate a target representation type (paper Sec. 3.2: dense feature
    or global feature); raises ``ValueError`` naming the bad value."""
    if output not in TARGET_OUTPUTS:
        raise ValueError(f'output must be one of {TARGET_OUTPUTS}, got '
                         f'{output!r}')
    return output


def target_representation(tokens: torch.Tensor, output: str) -> torch.Tensor:
    """z_y of an image target: the (N, L, C) tokens themselves (``'dense'``)
    or their mean over the L positions, (N, C) (``'global'``)."""
    return tokens if output == 'dense' else tokens.mean(dim=1)


TARGET_LAYER_NORMS = ('instance', 'layer', 'none')


def check_target_layer_norm(norm: str) -> str:
    """Validate the per-layer normalisation of :func:`average_top_layers`;
    raises ``ValueError`` naming the bad value."""
    if norm not in TARGET_LAYER_NORMS:
        raise ValueError(f'target_layer_norm must be one of '
                         f'{TARGET_LAYER_NORMS}, got {norm!r}')
    return norm


def average_top_layers(layer_tokens: Sequence[torch.Tensor],
                       norm: str = 'instance') -> torch.Tensor:
    """data2vec's target: the mean of the top transformer layers' outputs,
    each normalised first (Baevski et al., ICML 2022, Sec. 3.3; the
    ``instance_norm_target_layer`` / ``layer_norm_target_layer`` options
    of its fairseq code).

    Args:
        layer_tokens (sequence of Tensor): K outputs (N, L, C) of the top K
            blocks, patch tokens only.
        norm (str): ``'instance'``: each channel of each image standardised
            over its L tokens (``F.instance_norm``, no affine, eps 1e-5,
            data2vec's vision choice); ``'layer'``: each token over its C
            channels (no affine, eps 1e-5); ``'none'``.

    Returns:
        Tensor: (N, L, C), in fp32.

    Raises:
        ValueError: No layers, or an unknown ``norm``.
    """
    if not layer_tokens:
        raise ValueError('average_top_layers needs at least one layer')
    check_target_layer_norm(norm)
    total = 0
    for tokens in layer_tokens:
        tokens = tokens.float()
        if norm == 'instance':
            tokens = F.instance_norm(tokens.transpose(1, 2)).transpose(1, 2)
        elif norm == 'layer':
            tokens = F.layer_norm(tokens, tokens.shape[-1:])
        total = total + tokens
    return total / len(layer_tokens)


def top_layer_tokens(backbone: nn.Module, images: torch.Tensor,
                     k: int) -> List[torch.Tensor]:
    """The outputs of the last ``k`` blocks of a transformer backbone (its
    ``layers``, e.g. mmpretrain's ``VisionTransformer``), read with forward
    hooks during one forward, without the ``num_extra_tokens`` leading
    tokens (class token): K tensors (N, L, C), before the final norm.

    Raises:
        ValueError: The backbone has no ``layers`` or fewer than ``k``.
    """
    layers = getattr(backbone, 'layers', None)
    if not isinstance(layers, nn.ModuleList) or not 0 < k <= len(layers):
        depth = len(layers) if isinstance(layers, nn.ModuleList) else None
        raise ValueError(f'average_top_k={k} needs a backbone with at least '
                         f'{k} blocks in .layers; {type(backbone).__name__} '
                         f'has {depth}')
    extra = getattr(backbone, 'num_extra_tokens', 0)
    outputs = []
    handles = [layer.register_forward_hook(
        lambda _m, _i, out: outputs.append(out[:, extra:]))
        for layer in layers[len(layers) - k:]]
    try:
        backbone(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def cosine_momentum(steps: torch.Tensor, momentum: float,
                    end_momentum: float, max_iters: int) -> torch.Tensor:
    """EMA coefficient ``m`` of update ``steps`` (mmpretrain's
    ``CosineEMA``): ``end - (end - momentum) * (cos(π k / K) + 1) / 2``;
    ``m = 1`` at ``k = 0`` (the first update copies the online weights).

    Args:
        steps (Tensor): 0-dim, updates done so far (``k``).
        momentum (float): ``m`` at ``k = 0`` of the schedule.
        end_momentum (float): ``m`` at ``k = K``.
        max_iters (int): ``K``, the run's iterations.

    Returns:
        Tensor: 0-dim float32 ``m``, on ``steps``' device (no host read:
        one ``torch.compile`` graph).
    """
    k = steps.to(torch.float32)
    cosine = (torch.cos(math.pi * k / float(max_iters)) + 1) / 2
    m = end_momentum - (end_momentum - momentum) * cosine
    return torch.where(steps == 0, torch.ones_like(m), m)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2), else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@torch.compiler.assume_constant_result
def _max_iters() -> int:
    # A run's constant: torch.compile reads it once (MessageHub's lock
    # would break the graph).
    return MessageHub.get_current_instance().get_info('max_iters')


@MODELS.register_module()
class MomentumImageTarget(nn.Module):
    """Dense target features from an exponential moving average backbone.

    Wraps mmpretrain's :class:`CosineEMA`: the averaged copy is updated with
    ``θ_φ ← (1 - m) θ_φ + m θ`` where ``m`` follows a cosine schedule from
    ``momentum`` to ``end_momentum`` over training. With the paper's EMA
    coefficient 0.995 -> 1 (Table 7) this is ``momentum=0.005``,
    ``end_momentum=0``. It never receives gradients.

    Args:
        backbone (nn.Module): The online backbone f_θ to average.
        momentum (float): Start of ``m``. Defaults to 0.005.
        end_momentum (float): End of ``m``. Defaults to 0.
        output (str): ``'dense'`` (N, L, C) token features or ``'global'``
            (N, C), their mean (the "global feature" targets of Table 2
            (c, f, i, l)). Defaults to ``'dense'``.
        average_top_k (int, optional): data2vec's target (Table 5's typical
            work for MIM_feature): the mean of the last K blocks' outputs
            (:func:`average_top_layers`) instead of the final feature map;
            data2vec's ViT-B uses K = 6. ``None``: the feature map.
        target_layer_norm (str): Each layer's normalisation before the
            mean with ``average_top_k``: ``'instance'`` (data2vec),
            ``'layer'`` or ``'none'``.

    Raises:
        ValueError: A bad ``output``, ``average_top_k`` (< 1 or more than
            the backbone's blocks) or ``target_layer_norm``.
    """

    def __init__(self,
                 backbone: nn.Module,
                 momentum: float = 0.005,
                 end_momentum: float = 0.0,
                 output: str = 'dense',
                 average_top_k: Optional[int] = None,
                 target_layer_norm: str = 'instance') -> None:
        super().__init__()
        self.output = check_target_output(output)
        self.target_layer_norm = check_target_layer_norm(target_layer_norm)
        if average_top_k is not None:
            depth = len(getattr(backbone, 'layers', ()))
            if not 0 < average_top_k <= depth:
                raise ValueError(f'average_top_k must be in [1, {depth}] '
                                 f'(the backbone\'s blocks), got '
                                 f'{average_top_k}')
        self.average_top_k = average_top_k
        self.ema = CosineEMA(
            backbone,
            momentum=momentum,
            end_momentum=end_momentum)
        self.ema.requires_grad_(False)

    def track_parameters(self) -> None:
        """Average the momentum copy's current parameters: ``fully_shard``
        (:class:`~m3i_mm.engine.M3IFullyShardWrapper`) replaces them with
        sharded ones after ``CosineEMA`` listed them."""
        self.ema.avg_parameters = dict(self.ema.module.named_parameters())

    @torch.no_grad()
    def update(self, backbone: nn.Module) -> None:
        """One EMA step towards the online backbone: ``CosineEMA``'s
        update as one multi-tensor ``lerp`` with a device-side ``m``
        (:func:`cosine_momentum`), without its host reads of ``steps``.
        Sharded alike (FSDP2 DTensors of the same placements), each rank
        averages its own shards without communication."""
        ema = self.ema
        sources = dict(backbone.named_parameters())
        names = [name for name, p in ema.avg_parameters.items()
                 if p.dtype.is_floating_point]
        m = cosine_momentum(ema.steps, ema.momentum, ema.end_momentum,
                            _max_iters())
        averages = [_local(ema.avg_parameters[name]) for name in names]
        torch._foreach_lerp_(
            averages, [_local(sources[name]).to(p.device)
                       for name, p in zip(names, averages)],
            [m.to(p.device) for p in averages])
        for average, source in zip(ema.module.buffers(), backbone.buffers()):
            average.copy_(source.to(average.device))
        ema.steps += 1

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode target images: (N, C, H, W) -> (N, L, C) tokens, or (N, C)
        for ``output='global'``; with ``average_top_k`` the tokens are the
        normalised mean of the top K blocks (fp32)."""
        self.ema.module.eval()
        if self.average_top_k is None:
            tokens = backbone_tokens(self.ema.module, images)
        else:
            tokens = average_top_layers(
                top_layer_tokens(self.ema.module, images,
                                 self.average_top_k),
                self.target_layer_norm)
        return target_representation(tokens, self.output)
