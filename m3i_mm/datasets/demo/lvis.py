"""Embedded long-tailed demo data in the LVIS v1 layout.

The digit canvases of :mod:`.demo_detection` (96x96, 1 to 3 real scans,
masks = bright pixels, tight boxes), with a long-tailed train split so that
all three LVIS frequency groups exist under LVIS's own rule (rare: 1-10
training images, common: 11-100, frequent: > 100):

- train: digits are drawn, without replacement, with probability
  proportional to each digit's remaining quota of
  :data:`LVIS_TRAIN_QUOTA` instances until every quota is used; 1 to 3 per
  canvas (fewer when no free square is left, then the quota carries over).
- val: the 50 val canvases of the COCO-layout demo (97 instances, every
  digit present).

Fixed seeds make the data identical on every machine. Counts:

=====  ======  ===============  =========  ==============================
split  images  with 1/2/3 dig.  instances  per digit 0 .. 9
=====  ======  ===============  =========  ==============================
train  266     89 / 89 / 88     531        images: 105 104 112 57 38 25
                                           15 8 5 3 (f f f c c c c r r r)
                                           instances: 125 125 125 60 40
                                           25 15 8 5 3
val    50      21 / 11 / 18     97         the COCO-layout demo's val
=====  ======  ===============  =========  ==============================

:func:`materialize_demo_digits_lvis` writes them once, as mmdet's
:class:`LVISV1Dataset` reads LVIS v1::

    data/demo_digits_lvis/
        annotations/lvis_v1_train.json   lvis_v1_val.json
        train/canvas_00000.png ...        val/canvas_00000.png ...

As in LVIS v1, an image's path is its ``coco_url`` after
``http://images.cocodataset.org/`` (here ``train/canvas_00000.png``), each
image lists ``neg_category_ids`` (verified absent: every digit not on the
canvas, since the canvases are annotated exhaustively) and
``not_exhaustive_category_ids`` (none), and each category has its
``frequency``, ``image_count`` and ``instance_count`` in the train split,
identical in both files. Masks are compressed RLE (pixel-exact; the LVIS API
reads RLE as well as the polygons LVIS ships); there is no WordNet
``synset``.
"""
from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np

from mmdet.datasets import LVISV1Dataset
from mmdet.registry import DATASETS as MMDET_DATASETS
from ..non_empty import NonEmptyMixin
from .detection import (DEMO_DENSE_SEED, DIGIT_PALETTE,
                             MAX_DIGITS_PER_IMAGE, coco_annotations,
                             compose_canvas, render_demo_canvases,
                             write_split)
from .digits import (DIGIT_CLASSES, check_split, demo_digits_split,
                          materialize_atomically)

# Train instances per digit 0..9.
LVIS_TRAIN_QUOTA = (125, 125, 125, 60, 40, 25, 15, 8, 5, 3)
LVIS_SEED = DEMO_DENSE_SEED + 10
LVIS_URL_PREFIX = 'http://images.cocodataset.org/'


def lvis_frequency(image_count: int) -> str:
    """LVIS's frequency group of a category with ``image_count`` training
    images: ``'r'`` (1-10), ``'c'`` (11-100) or ``'f'`` (> 100)."""
    if image_count <= 10:
        return 'r'
    return 'c' if image_count <= 100 else 'f'


def render_long_tail_canvases() -> List[Tuple[np.ndarray, List[dict]]]:
    """Compose the long-tailed train canvases (deterministic).

    Returns:
        list[tuple[np.ndarray, list[dict]]]: ``(canvas, instances)`` pairs
        as :func:`m3i_mm.datasets.demo.detection.render_demo_canvases`.
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(LVIS_SEED)
    train = np.asarray(demo_digits_split('train'))
    pools = [
        rng.permutation(train[digits.target[train] == d]).tolist()
        for d in range(len(DIGIT_CLASSES))
    ]
    quota = np.asarray(LVIS_TRAIN_QUOTA)
    if any(q > len(p) for q, p in zip(quota, pools)):
        raise ValueError(f'LVIS_TRAIN_QUOTA {LVIS_TRAIN_QUOTA} exceeds the '
                         f'train scans per digit {[len(p) for p in pools]}')

    def take_index() -> int:
        digit = int(rng.choice(len(quota), p=quota / quota.sum()))
        quota[digit] -= 1
        return pools[digit].pop()

    canvases = []
    while quota.sum() > 0:
        num = min(int(rng.integers(1, MAX_DIGITS_PER_IMAGE + 1)),
                  int(quota.sum()))
        canvases.append(compose_canvas(rng, digits, num, take_index))
    return canvases


def category_statistics(
        canvases: List[Tuple[np.ndarray, List[dict]]]) -> List[dict]:
    """LVIS categories with the image and instance counts of ``canvases``.

    Args:
        canvases (list): Train canvases.

    Returns:
        list[dict]: One LVIS category per digit (``id = label + 1``).
    """
    instances = Counter(inst['label'] for _, insts in canvases
                        for inst in insts)
    images = Counter(label for _, insts in canvases
                     for label in {inst['label'] for inst in insts})
    return [{
        'id': label + 1,
        'name': name,
        'synonyms': [name],
        'def': f'the handwritten digit {label}',
        'frequency': lvis_frequency(images[label]),
        'image_count': images[label],
        'instance_count': instances[label]
    } for label, name in enumerate(DIGIT_CLASSES)]


def lvis_annotations(split: str,
                     canvases: List[Tuple[np.ndarray, List[dict]]],
                     categories: List[dict]) -> dict:
    """The LVIS v1 json of a split's canvases.

    Args:
        split (str): ``'train'`` or ``'val'`` (the image folder).
        canvases (list): The split's canvases.
        categories (list[dict]): :func:`category_statistics` of train.

    Returns:
        dict: ``images`` (with ``coco_url``, ``neg_category_ids``,
        ``not_exhaustive_category_ids``), ``annotations`` and
        ``categories``.
    """
    ann = coco_annotations(split, canvases)
    all_ids = {c['id'] for c in categories}
    present: Dict[int, set] = {}
    for a in ann['annotations']:
        present.setdefault(a['image_id'], set()).add(a['category_id'])
        del a['iscrowd']  # not an LVIS field
    for image in ann['images']:
        image['coco_url'] = f"{LVIS_URL_PREFIX}{split}/{image['file_name']}"
        image['neg_category_ids'] = sorted(all_ids - present[image['id']])
        image['not_exhaustive_category_ids'] = []
    ann['categories'] = [dict(c) for c in categories]
    return ann


def materialize_demo_digits_lvis(root: str) -> str:
    """Write the LVIS-layout demo canvases under ``root`` unless present.

    Args:
        root (str): Target folder (e.g. ``data/demo_digits_lvis``).

    Returns:
        str: The absolute ``root``.
    """

    def write(tmp: str) -> None:
        splits = {
            'train': render_long_tail_canvases(),
            'val': render_demo_canvases('val')
        }
        categories = category_statistics(splits['train'])
        for split, canvases in splits.items():
            write_split(tmp, split, canvases,
                        lvis_annotations(split, canvases, categories),
                        f'lvis_v1_{split}.json')

    return materialize_atomically(root, write, 'demo-digits LVIS')


@MMDET_DATASETS.register_module()
class DemoDigitsLvis(NonEmptyMixin, LVISV1Dataset):
    """The LVIS-layout demo canvases read by mmdet's :class:`LVISV1Dataset`.

    Only adds writing the files on first use
    (:func:`materialize_demo_digits_lvis`) and the named error of an empty
    dataset (:class:`NonEmptyMixin`); parsing (the LVIS API), paths
    from ``coco_url`` and mask loading are mmdet's own, as for LVIS v1.

    Args:
        data_root (str): Folder of the demo data. Defaults to
            ``'data/demo_digits_lvis'``.
        split (str): ``'train'`` or ``'val'``; selects
            ``annotations/lvis_v1_{split}.json`` unless ``ann_file`` is
            given. Defaults to ``'train'``.
        ann_file (str, optional): Annotation file relative to ``data_root``.
        data_prefix (dict, optional): mmdet's ``dict(img=...)``. Defaults
            to ``dict(img='')`` (paths come from ``coco_url``).
        **kwargs: Passed to :class:`LVISV1Dataset`.
    """

    METAINFO: Dict = {'classes': DIGIT_CLASSES, 'palette': DIGIT_PALETTE}

    def __init__(self,
                 data_root: str = 'data/demo_digits_lvis',
                 split: str = 'train',
                 ann_file: Optional[str] = None,
                 data_prefix: Optional[dict] = None,
                 **kwargs) -> None:
        check_split(split)
        materialize_demo_digits_lvis(data_root)
        super().__init__(
            data_root=data_root,
            ann_file=ann_file or f'annotations/lvis_v1_{split}.json',
            data_prefix=data_prefix or dict(img=''),
            **kwargs)
