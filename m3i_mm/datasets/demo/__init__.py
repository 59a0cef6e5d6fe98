"""The embedded demo data: scikit-learn's 1,797 real digit scans written on
first use in the layouts of ImageNet (:mod:`.digits`, also as captions),
COCO (:mod:`.detection`), ADE20k (:mod:`.segmentation`), LVIS v1
(:mod:`.lvis`) and Flickr30K's Karpathy split (:mod:`.karpathy`)."""
from .detection import DemoDigitsCoco, materialize_demo_digits_coco
from .digits import (CAPTION_TEMPLATES, DIGIT_CLASSES, DemoDigits,
                     DemoDigitsCaptions, demo_digits_split,
                     materialize_demo_digits)
from .karpathy import KARPATHY_ANN_FILE, materialize_demo_digits_karpathy
from .lvis import DemoDigitsLvis, materialize_demo_digits_lvis
from .segmentation import DemoDigitsSeg, materialize_demo_digits_ade

__all__ = [
    'CAPTION_TEMPLATES', 'DIGIT_CLASSES', 'KARPATHY_ANN_FILE', 'DemoDigits',
    'DemoDigitsCaptions',
    'DemoDigitsCoco', 'DemoDigitsLvis', 'DemoDigitsSeg', 'demo_digits_split',
    'materialize_demo_digits', 'materialize_demo_digits_ade',
    'materialize_demo_digits_coco', 'materialize_demo_digits_karpathy',
    'materialize_demo_digits_lvis'
]
