from .demo import (CAPTION_TEMPLATES, DIGIT_CLASSES, DemoDigits,
                   DemoDigitsCaptions, DemoDigitsCoco, DemoDigitsLvis,
                   DemoDigitsSeg, demo_digits_split, materialize_demo_digits,
                   materialize_demo_digits_ade, materialize_demo_digits_coco,
                   materialize_demo_digits_karpathy,
                   materialize_demo_digits_lvis)
from .image_text import ImageTextDataset, ImageTextShards, expand_shards
from .multi_source import MultiSourceDataset
from .non_empty import (NonEmptyDataset, NonEmptyMixin, build_dataset,
                        empty_dataset_error)
from .transforms import (BlockwiseMaskGenerator, M3IViews,
                         NamedLoadDetAnnotations, NamedLoadImageFromFile,
                         NamedLoadSegAnnotations)

__all__ = [
    'BlockwiseMaskGenerator', 'CAPTION_TEMPLATES', 'DIGIT_CLASSES',
    'DemoDigits', 'DemoDigitsCaptions', 'DemoDigitsCoco', 'DemoDigitsLvis',
    'DemoDigitsSeg', 'ImageTextDataset', 'ImageTextShards', 'M3IViews',
    'MultiSourceDataset', 'NamedLoadDetAnnotations', 'NamedLoadImageFromFile',
    'NamedLoadSegAnnotations', 'NonEmptyDataset', 'NonEmptyMixin',
    'build_dataset', 'demo_digits_split', 'empty_dataset_error',
    'expand_shards', 'materialize_demo_digits', 'materialize_demo_digits_ade',
    'materialize_demo_digits_coco', 'materialize_demo_digits_karpathy',
    'materialize_demo_digits_lvis'
]
