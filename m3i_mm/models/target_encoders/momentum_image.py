"""Image target encoder f_φ: a momentum (EMA) copy of the input backbone."""

import torch
import torch.nn as nn

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
    """

    def __init__(self,
                 backbone: nn.Module,
                 momentum: float = 0.005,
                 end_momentum: float = 0.0) -> None:
        super().__init__()
        self.ema = CosineEMA(
            backbone,
            momentum=momentum,
            end_momentum=end_momentum)
        self.ema.requires_grad_(False)

    @torch.no_grad()
    def update(self, backbone: nn.Module) -> None:
        """One EMA step towards the online backbone."""
        self.ema.update_parameters(backbone)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode target images: (N, C, H, W) -> (N, L, C) tokens."""
        self.ema.module.eval()
        return backbone_tokens(self.ema.module, images)
