from .demo_digits import (DIGIT_CLASSES, DemoDigits, demo_digits_split,
                          materialize_demo_digits)
from .transforms import BlockwiseMaskGenerator, M3IViews

__all__ = [
    'BlockwiseMaskGenerator', 'DIGIT_CLASSES', 'DemoDigits', 'M3IViews',
    'demo_digits_split', 'materialize_demo_digits'
]
