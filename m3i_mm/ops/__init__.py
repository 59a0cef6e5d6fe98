"""Custom operators of m3i_mm."""
from .dcnv3 import (DCNv3, cuda_ext_available, dcnv3_core, dcnv3_core_pytorch,
                    dcnv3_output_size)

__all__ = [
    'DCNv3', 'cuda_ext_available', 'dcnv3_core', 'dcnv3_core_pytorch',
    'dcnv3_output_size'
]
