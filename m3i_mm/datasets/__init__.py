from .demo_digits import (DIGIT_CLASSES, DemoDigits, demo_digits_split,
                          materialize_demo_digits)

__all__ = [
    'DIGIT_CLASSES', 'DemoDigits', 'demo_digits_split',
    'materialize_demo_digits'
]
