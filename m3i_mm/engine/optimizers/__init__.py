from .amp import CPUAwareAmpOptimWrapper
from .layer_decay import BackboneLayerDecayOptimWrapperConstructor

__all__ = [
    'BackboneLayerDecayOptimWrapperConstructor', 'CPUAwareAmpOptimWrapper'
]
