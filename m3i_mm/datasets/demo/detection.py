"""Embedded dense demo data: digit canvases in the COCO detection layout.

Real-image-derived detection and instance-segmentation data built from
scikit-learn's handwritten digits (the scans of :mod:`.digits`). Each
image is a black ``96 x 96`` canvas holding 1 to 3 real 8x8 scans, each
upscaled x3 or x4 (bicubic, 24 or 32 px) and pasted at a random position so
that the pasted squares do not overlap. An instance is one pasted digit:

- its mask is the set of pixels whose upscaled value is ``> 64`` (of 255),
- its box is the tightest box around the mask (COCO ``[x, y, w, h]``),
- its category is the digit (COCO ``category_id = label + 1``; the names
  are :data:`DIGIT_CLASSES`, so mmdet maps them back to ``label``).

Since the canvas is black and the squares are disjoint, the bright pixels
(``> 64``) of a canvas are exactly the union of its instance masks.

The digits come from the split of :func:`demo_digits_split` (val digits
never appear in train canvases) and each scan is used at most once. Fixed
seeds make the data identical on every machine. Counts:

=====  ======  ===============  =========  ============================
split  images  with 1/2/3 dig.  instances  instances of digit 0 .. 9
=====  ======  ===============  =========  ============================
train  200     68 / 74 / 58     390        51 42 42 34 34 37 41 35 46 28
val    50      21 / 11 / 18     97         7 7 9 18 9 7 12 10 11 7
=====  ======  ===============  =========  ============================

:func:`materialize_demo_digits_coco` writes them once, in the layout of
mmdet's :class:`CocoDataset`::

    data/demo_digits_coco/
        annotations/instances_train.json   instances_val.json
        train/canvas_00000.png ...          (RGB, the gray canvas x 3)
        val/canvas_00000.png ...

Masks are stored as compressed RLE (pycocotools), which is pixel-exact; each
annotation also records the scikit-learn sample index (``digit_index``) and
its upscale factor (``digit_scale``). The same canvases in the ADE20k
semantic-segmentation layout are written by
:mod:`m3i_mm.datasets.demo.segmentation`.
"""
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS as MMDET_DATASETS
from ..non_empty import NonEmptyMixin
from .digits import (DIGIT_CLASSES, check_split, demo_digits_split,
                          digit_image, materialize_atomically)

CANVAS_SIZE = 96
DIGIT_SCALES = (3, 4)
MASK_THRESHOLD = 64  # a pixel is in a digit's mask where its value > this
MAX_DIGITS_PER_IMAGE = 3
DEMO_DENSE_IMAGES = {'train': 200, 'val': 50}
DEMO_DENSE_SEED = 2023
DIGIT_PALETTE = [[230, 25, 75], [60, 180, 75], [255, 225, 25],
                 [0, 130, 200], [245, 130, 48], [145, 30, 180],
                 [70, 240, 240], [240, 50, 230], [210, 245, 60],
                 [250, 190, 212]]
_SPLIT_SEED_OFFSET = {'train': 0, 'val': 1}


def upscale_digit(image_8x8: np.ndarray, scale: int) -> np.ndarray:
    """A 0..16 digit scan as a uint8 image ``scale`` times larger (bicubic).

    Args:
        image_8x8 (np.ndarray): (8, 8) scan with values 0..16.
        scale (int): Upscale factor.

    Returns:
        np.ndarray: (8 * scale, 8 * scale) uint8 image, values 0..255.
    """
    return np.asarray(digit_image(image_8x8, image_8x8.shape[0] * scale))


def render_demo_canvases(split: str) -> List[Tuple[np.ndarray, List[dict]]]:
    """Compose the demo canvases of a split (deterministic).

    Args:
        split (str): ``'train'`` or ``'val'``.

    Returns:
        list[tuple[np.ndarray, list[dict]]]: One ``(canvas, instances)`` per
        image: the (96, 96) uint8 gray canvas and, per pasted digit, a dict
        with ``digit_index`` (scikit-learn sample index), ``label``,
        ``scale``, ``square`` (x, y, side of the pasted square) and ``mask``
        ((96, 96) bool).
    """
    check_split(split)
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(DEMO_DENSE_SEED + _SPLIT_SEED_OFFSET[split])
    pool = rng.permutation(demo_digits_split(split)).tolist()
    return [
        compose_canvas(rng, digits,
                       int(rng.integers(1, MAX_DIGITS_PER_IMAGE + 1)),
                       pool.pop)
        for _ in range(DEMO_DENSE_IMAGES[split])
    ]


def compose_canvas(rng: np.random.Generator, digits,
                   num_digits: int, take_index: Callable[[], int]
                   ) -> Tuple[np.ndarray, List[dict]]:
    """Paste up to ``num_digits`` digit scans on one black canvas.

    For each digit: an upscale factor and a free square are drawn from
    ``rng`` (stopping early when no square is free), then ``take_index()``
    gives the scikit-learn sample to paste there.

    Args:
        rng (np.random.Generator): Random state (advanced).
        digits: ``sklearn.datasets.load_digits()``.
        num_digits (int): Digits to paste at most.
        take_index (callable): Returns the next sample index to paste.

    Returns:
        tuple[np.ndarray, list[dict]]: The (96, 96) uint8 canvas and the
        instances (see :func:`render_demo_canvases`).
    """
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    squares: List[Tuple[int, int, int]] = []
    instances = []
    for _ in range(num_digits):
        scale = int(rng.choice(DIGIT_SCALES))
        side = 8 * scale
        place = _free_square(rng, squares, side)
        if place is None:  # no room left on this canvas
            break
        x, y = place
        index = take_index()
        patch = upscale_digit(digits.images[index], scale)
        canvas[y:y + side, x:x + side] = patch
        mask = np.zeros_like(canvas, dtype=bool)
        mask[y:y + side, x:x + side] = patch > MASK_THRESHOLD
        squares.append((x, y, side))
        instances.append(
            dict(
                digit_index=int(index),
                label=int(digits.target[index]),
                scale=scale,
                square=(x, y, side),
                mask=mask))
    return canvas, instances


def _free_square(rng: np.random.Generator,
                 squares: List[Tuple[int, int, int]],
                 side: int,
                 tries: int = 100) -> Optional[Tuple[int, int]]:
    """Top-left corner of a square not overlapping ``squares``, or None."""
    for _ in range(tries):
        x, y = (int(v) for v in rng.integers(0, CANVAS_SIZE - side + 1, 2))
        if all(x + side <= sx or sx + s <= x or y + side <= sy or sy + s <= y
               for sx, sy, s in squares):
            return x, y
    return None


def tight_box(mask: np.ndarray) -> List[int]:
    """COCO box ``[x, y, w, h]`` of the pixels of a non-empty mask.

    Args:
        mask (np.ndarray): (H, W) bool mask.

    Returns:
        list[int]: Smallest box containing every mask pixel.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError('cannot box an empty mask')
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def save_rgb_png(gray: np.ndarray, path: str) -> None:
    """Write a (H, W) uint8 gray image as a 3-channel PNG."""
    from PIL import Image
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2),
                    mode='RGB').save(path)


def coco_annotations(split: str,
                     canvases: List[Tuple[np.ndarray, List[dict]]]) -> dict:
    """The COCO instances json of a split's canvases.

    Args:
        split (str): Split name (recorded in ``info``).
        canvases (list): Output of :func:`render_demo_canvases`.

    Returns:
        dict: ``images``, ``annotations`` (RLE masks, ``iscrowd=0``) and
        ``categories`` (``id = label + 1``, ``name`` from
        :data:`DIGIT_CLASSES`).
    """
    from pycocotools import mask as mask_utils
    images, annotations = [], []
    for image_id, (canvas, instances) in enumerate(canvases, start=1):
        images.append(
            dict(
                id=image_id,
                file_name=f'canvas_{image_id - 1:05d}.png',
                height=int(canvas.shape[0]),
                width=int(canvas.shape[1])))
        for inst in instances:
            rle = mask_utils.encode(np.asfortranarray(inst['mask']))
            rle['counts'] = rle['counts'].decode('ascii')
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=inst['label'] + 1,
                    bbox=tight_box(inst['mask']),
                    area=int(inst['mask'].sum()),
                    segmentation=rle,
                    iscrowd=0,
                    digit_index=inst['digit_index'],
                    digit_scale=inst['scale']))
    return dict(
        info=dict(
            description=f'm3i_mm demo digits, {split}: scikit-learn digit '
            f'scans on {CANVAS_SIZE}x{CANVAS_SIZE} canvases'),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[
            dict(id=label + 1, name=name, supercategory='digit')
            for label, name in enumerate(DIGIT_CLASSES)
        ])


def materialize_demo_digits_coco(root: str) -> str:
    """Write the COCO-layout demo canvases under ``root`` unless present.

    Args:
        root (str): Target folder (e.g. ``data/demo_digits_coco``).

    Returns:
        str: The absolute ``root``.
    """

    def write(tmp: str) -> None:
        for split in DEMO_DENSE_IMAGES:
            canvases = render_demo_canvases(split)
            write_split(tmp, split, canvases,
                        coco_annotations(split, canvases),
                        f'instances_{split}.json')

    return materialize_atomically(root, write, 'demo-digits COCO')


def write_split(root: str, split: str,
                canvases: List[Tuple[np.ndarray, List[dict]]], ann: dict,
                ann_name: str) -> None:
    """Write a split's canvases to ``root/split/`` and its annotations.

    Args:
        root (str): Data folder.
        split (str): Image sub-folder.
        canvases (list): The split's ``(canvas, instances)`` pairs.
        ann (dict): Annotations whose ``images`` name the files, in order.
        ann_name (str): File name under ``root/annotations/``.
    """
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    os.makedirs(osp.join(root, split))
    for info, (canvas, _) in zip(ann['images'], canvases):
        save_rgb_png(canvas, osp.join(root, split, info['file_name']))
    with open(osp.join(root, 'annotations', ann_name), 'w') as f:
        json.dump(ann, f)


@MMDET_DATASETS.register_module()
class DemoDigitsCoco(NonEmptyMixin, CocoDataset):
    """The COCO-layout demo canvases read by mmdet's :class:`CocoDataset`.

    Only adds writing the files on first use
    (:func:`materialize_demo_digits_coco`) and the named error of an empty
    dataset (:class:`NonEmptyMixin`); annotation parsing (pycocotools),
    box conversion and mask loading are mmdet's own, exactly as for COCO.

    Args:
        data_root (str): Folder of the demo data. Defaults to
            ``'data/demo_digits_coco'``.
        split (str): ``'train'`` or ``'val'``; selects
            ``annotations/instances_{split}.json`` and ``{split}/`` unless
            ``ann_file`` / ``data_prefix`` are given. Defaults to ``'train'``.
        ann_file (str, optional): Annotation file relative to ``data_root``.
        data_prefix (dict, optional): mmdet's ``dict(img=...)``.
        **kwargs: Passed to :class:`CocoDataset` (``pipeline``,
            ``filter_cfg``, ``test_mode``, ...).
    """

    METAINFO: Dict = {'classes': DIGIT_CLASSES, 'palette': DIGIT_PALETTE}

    def __init__(self,
                 data_root: str = 'data/demo_digits_coco',
                 split: str = 'train',
                 ann_file: Optional[str] = None,
                 data_prefix: Optional[dict] = None,
                 **kwargs) -> None:
        check_split(split)
        materialize_demo_digits_coco(data_root)
        super().__init__(
            data_root=data_root,
            ann_file=ann_file or f'annotations/instances_{split}.json',
            data_prefix=data_prefix or dict(img=f'{split}/'),
            **kwargs)
