"""DCNv3, the deformable convolution of InternImage."""
from .dispatch import cuda_ext_available, dcnv3_core
from .functional import dcnv3_core_pytorch, dcnv3_output_size
from .modules import DCNv3

__all__ = [
    'DCNv3', 'cuda_ext_available', 'dcnv3_core', 'dcnv3_core_pytorch',
    'dcnv3_output_size'
]
