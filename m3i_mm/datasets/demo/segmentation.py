"""Embedded dense demo data: digit canvases in the ADE20k segmentation layout.

The canvases of :mod:`m3i_mm.datasets.demo.detection` (200 train / 50 val,
96 x 96, 1 to 3 real digit scans each, fixed seeds) as semantic
segmentation data in the layout of mmseg's :class:`ADE20KDataset`::

    data/demo_digits_ade/
        images/training/canvas_00000.png ...        (RGB)
        images/validation/canvas_00000.png ...
        annotations/training/canvas_00000.png ...   (uint8 label maps)
        annotations/validation/canvas_00000.png ...

Label maps follow ADE20k's convention: ``0`` is background ("other", not a
class) and a pixel of digit ``d`` (its upscaled value > 64, i.e. exactly the
instance masks of the COCO layout) is ``d + 1``. With
``reduce_zero_label=True`` (set by :class:`DemoDigitsSeg`, as by
``ADE20KDataset``) mmseg turns background into the ignore index 255 and
digit ``d + 1`` into class ``d`` of :data:`DIGIT_CLASSES`, so training and
mIoU cover the 10 digit classes and skip the background, as on ADE20k.
Images are written as lossless PNG (ADE20k ships JPEG); the dataset sets
``img_suffix='.png'``.
"""
import os
import os.path as osp
from typing import Dict, Optional

import numpy as np

from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS as MMSEG_DATASETS
from ..non_empty import NonEmptyMixin
from .detection import (DIGIT_PALETTE, render_demo_canvases,
                             save_rgb_png)
from .digits import DIGIT_CLASSES, check_split, materialize_atomically

ADE_SPLITS = {'train': 'training', 'val': 'validation'}


def label_map_of(canvas: np.ndarray, instances: list) -> np.ndarray:
    """The ADE-style label map of a canvas: 0 background, digit + 1.

    Args:
        canvas (np.ndarray): (H, W) canvas (for its shape).
        instances (list[dict]): Its digits, with ``mask`` and ``label``.

    Returns:
        np.ndarray: (H, W) uint8 label map.
    """
    labels = np.zeros(canvas.shape, dtype=np.uint8)
    for inst in instances:
        labels[inst['mask']] = inst['label'] + 1
    return labels


def materialize_demo_digits_ade(root: str) -> str:
    """Write the ADE-layout demo canvases under ``root`` unless present.

    Args:
        root (str): Target folder (e.g. ``data/demo_digits_ade``).

    Returns:
        str: The absolute ``root``.
    """
    from PIL import Image

    def write(tmp: str) -> None:
        for split, ade_split in ADE_SPLITS.items():
            img_dir = osp.join(tmp, 'images', ade_split)
            ann_dir = osp.join(tmp, 'annotations', ade_split)
            os.makedirs(img_dir)
            os.makedirs(ann_dir)
            for i, (canvas, instances) in enumerate(
                    render_demo_canvases(split)):
                name = f'canvas_{i:05d}.png'
                save_rgb_png(canvas, osp.join(img_dir, name))
                Image.fromarray(label_map_of(canvas, instances),
                                mode='L').save(osp.join(ann_dir, name))

    return materialize_atomically(root, write, 'demo-digits ADE')


@MMSEG_DATASETS.register_module()
class DemoDigitsSeg(NonEmptyMixin, ADE20KDataset):
    """The ADE-layout demo canvases read by mmseg's :class:`ADE20KDataset`.

    Only adds writing the files on first use
    (:func:`materialize_demo_digits_ade`), the 10 digit classes, PNG
    images and the named error of an empty dataset (:class:`NonEmptyMixin`);
    file listing, ``reduce_zero_label`` and label loading are mmseg's own,
    exactly as for ADE20k.

    Args:
        data_root (str): Folder of the demo data. Defaults to
            ``'data/demo_digits_ade'``.
        split (str): ``'train'`` or ``'val'``; selects
            ``images/{training,validation}`` and the matching annotations
            unless ``data_prefix`` is given. Defaults to ``'train'``.
        data_prefix (dict, optional): mmseg's
            ``dict(img_path=..., seg_map_path=...)``.
        img_suffix (str): Defaults to ``'.png'``.
        **kwargs: Passed to :class:`ADE20KDataset` (``pipeline``,
            ``test_mode``, ``reduce_zero_label`` (True), ...).
    """

    METAINFO: Dict = {'classes': DIGIT_CLASSES, 'palette': DIGIT_PALETTE}

    def __init__(self,
                 data_root: str = 'data/demo_digits_ade',
                 split: str = 'train',
                 data_prefix: Optional[dict] = None,
                 img_suffix: str = '.png',
                 **kwargs) -> None:
        check_split(split)
        materialize_demo_digits_ade(data_root)
        ade_split = ADE_SPLITS[split]
        super().__init__(
            data_root=data_root,
            data_prefix=data_prefix or dict(
                img_path=f'images/{ade_split}',
                seg_map_path=f'annotations/{ade_split}'),
            img_suffix=img_suffix,
            **kwargs)
