"""Image target encoder f_φ: a momentum (EMA) copy of the input backbone."""
import math

import torch
import torch.nn as nn
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
    """

    def __init__(self,
                 backbone: nn.Module,
                 momentum: float = 0.005,
                 end_momentum: float = 0.0,
                 output: str = 'dense') -> None:
        super().__init__()
        self.output = check_target_output(output)
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
        for ``output='global'``."""
        self.ema.module.eval()
        return target_representation(
            backbone_tokens(self.ema.module, images), self.output)
