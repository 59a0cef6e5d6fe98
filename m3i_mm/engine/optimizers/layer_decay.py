"""Layer-wise lr decay for detectors and segmentors.

mmpretrain's :class:`LearningRateDecayOptimWrapperConstructor` asks the
optimised module for ``get_layer_depth(param_name) -> (layer_id, max_id)``
and scales each parameter's lr by ``rate ** (max_id - layer_id - 1)``. A
detector or segmentor has no such method; its backbone does (``ViTDet``,
``InternImage``). :class:`BackboneLayerDecayOptimWrapperConstructor` asks
the backbone for ``backbone.*`` parameters; every other parameter (neck,
heads) is at the top depth (lr scale 1), except those matching
``stem_depth_keys``, which take depth 0 (the embeddings' lr), as the
official InternImage Mask2Former recipes do for the head's query, level and
class embeddings.
"""
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmdet.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMDET_OPTIM_WRAPPER_CONSTRUCTORS
from mmpretrain.engine.optimizers import \
    LearningRateDecayOptimWrapperConstructor
from mmseg.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMSEG_OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['BackboneLayerDecayOptimWrapperConstructor']


def _model_layer_depth(param_name: str, backbone: nn.Module,
                       stem_depth_keys: Sequence[str]) -> Tuple[int, int]:
    """Depth of any parameter of a model with ``backbone.get_layer_depth``
    (which, as mmpretrain's, puts names outside its prefix at the top)."""
    layer_id, max_id = backbone.get_layer_depth(param_name, 'backbone.')
    if any(key in param_name for key in stem_depth_keys):
        layer_id = 0
    return layer_id, max_id


@MMDET_OPTIM_WRAPPER_CONSTRUCTORS.register_module()
@MMSEG_OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class BackboneLayerDecayOptimWrapperConstructor(
        LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-wise lr decay, with depths from the backbone.

    ``paramwise_cfg`` takes mmpretrain's keys (``layer_decay_rate``,
    ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``,
    ``custom_keys`` for weight decay) and ``stem_depth_keys``: substrings of
    non-backbone parameter names that get depth 0. The backbone must have
    ``get_layer_depth(param_name, prefix)``.
    """

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   get_layer_depth: Optional[Callable] = None,
                   **kwargs) -> None:
        """Add the parameters of ``module`` (see mmpretrain's version)."""
        if get_layer_depth is None:
            backbone = getattr(module, 'backbone', None)
            if not hasattr(backbone, 'get_layer_depth'):
                raise TypeError(
                    f'{type(module).__name__} has no backbone with '
                    f'get_layer_depth (e.g. ViTDet, InternImage) for '
                    f'layer-wise lr decay')
            get_layer_depth = partial(
                _model_layer_depth,
                backbone=backbone,
                stem_depth_keys=tuple(
                    self.paramwise_cfg.get('stem_depth_keys', ())))
        super().add_params(params, module, prefix, get_layer_depth, **kwargs)
