"""mmpretrain's ViT with activation checkpointing of its layers."""
import torch
import torch.utils.checkpoint as cp
from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.models.backbones.vision_transformer import \
    TransformerEncoderLayer

from m3i_mm.registry import register_backbone

__all__ = ['CheckpointedVisionTransformer']


class _CheckpointedLayer(TransformerEncoderLayer):
    """mmpretrain's ViT layer recomputed in the backward pass
    (``torch.utils.checkpoint``, ``use_reentrant=False``, random state
    preserved: stochastic depth draws the same paths)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.requires_grad:
            return cp.checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)


@register_backbone
class CheckpointedVisionTransformer(VisionTransformer):
    """``VisionTransformer`` (mmpretrain) with ``with_cp``: each layer's
    activations are recomputed in the backward pass instead of kept, for
    ~1/3 more compute. Same parameters and state-dict keys as
    ``VisionTransformer``; every layer call goes through it (also
    :func:`m3i_mm.models.utils.vit_visible_tokens`).

    Args:
        with_cp (bool): Activation checkpointing of every layer. Defaults to
            False.
        **kwargs: ``VisionTransformer``'s arguments.
    """

    def __init__(self, *args, with_cp: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.with_cp = with_cp
        if with_cp:
            for layer in self.layers:
                # The same module and parameters, its forward checkpointed.
                layer.__class__ = _CheckpointedLayer
