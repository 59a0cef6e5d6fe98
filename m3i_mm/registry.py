"""Registries m3i_mm registers into.

m3i_mm has no registries of its own: following the OpenMMLab plugin convention
its modules live in the registries of the libraries that use them. Algorithms,
transforms and hooks for pre-training go to mmpretrain; backbones and necks that
transfer downstream are registered in mmpretrain, mmdet and mmseg at once with
:func:`register_backbone`. Engine parts any config may use (``M3IRunner``,
``DurableCheckpointHook``, ``CPUAwareAmpOptimWrapper``) go to mmengine's root
registries (``RUNNERS``, ``HOOKS``, ``OPTIM_WRAPPERS``), which every scope
searches.
"""
from typing import Callable, List, Optional, Type

from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.registry import Registry
from mmpretrain.registry import DATASETS, HOOKS, METRICS, MODELS, TRANSFORMS
from mmseg.registry import MODELS as MMSEG_MODELS

__all__ = [
    'DATASETS', 'HOOKS', 'METRICS', 'MODELS', 'TRANSFORMS',
    'downstream_model_registries', 'register_backbone'
]


def downstream_model_registries() -> List[Registry]:
    """The MODELS registries of mmdet and mmseg."""
    return [MMDET_MODELS, MMSEG_MODELS]


def register_backbone(cls: Optional[Type] = None,
                      name: Optional[str] = None) -> Callable:
    """Register a module in the MODELS registries of mmpretrain, mmdet, mmseg.

    Args:
        cls (type, optional): The class, when used as ``register_backbone(C)``.
        name (str, optional): Registered name; defaults to the class name.

    Returns:
        The class (decorator form) or a decorator.
    """

    def _register(module_cls: Type) -> Type:
        for registry in [MODELS] + downstream_model_registries():
            registry.register_module(name=name, module=module_cls)
        return module_cls

    return _register(cls) if cls is not None else _register
