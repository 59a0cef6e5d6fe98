"""Embedded demo data: scikit-learn's handwritten digits on disk.

scikit-learn ships 1,797 real 8x8 scans of handwritten digits (10 classes,
values 0..16). :func:`materialize_demo_digits` writes them once, upscaled to
``image_size`` (bicubic) as grayscale PNGs, in the ImageNet folder layout that
mmpretrain's :class:`CustomDataset`/``ImageNet`` read::

    data/demo_digits/
        train/<class name>/digit_00000.png ...
        val/<class name>/digit_00004.png ...
        meta/train.txt   "train/zero/digit_00000.png 0" per line
        meta/val.txt
        meta/classes.txt one class name per line

Split (fixed, documented): sample ``i`` of ``load_digits()`` goes to ``val``
when ``i % 5 == 4`` and to ``train`` otherwise: 1,438 train and 359 val images.
"""
import os
import os.path as osp
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from mmpretrain.datasets import CustomDataset
from m3i_mm.registry import DATASETS
from ..non_empty import NonEmptyMixin
from ..labels import check_label_file

DIGIT_CLASSES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six',
                 'seven', 'eight', 'nine')
VAL_EVERY = 5  # sample i is in val when i % VAL_EVERY == VAL_EVERY - 1
_DONE_FLAG = '.complete'


def check_split(split: str) -> None:
    """Raise unless ``split`` is a demo split (``'train'`` or ``'val'``)."""
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def demo_digits_split(split: str) -> List[int]:
    """Indices of ``sklearn.datasets.load_digits()`` in a split.

    Args:
        split (str): ``'train'`` or ``'val'``.

    Returns:
        list[int]: Sample indices in ascending order.
    """
    check_split(split)
    from sklearn.datasets import load_digits
    n = len(load_digits().target)
    in_val = (np.arange(n) % VAL_EVERY) == VAL_EVERY - 1
    return np.flatnonzero(in_val if split == 'val' else ~in_val).tolist()


def digit_image(image_8x8: np.ndarray, image_size: int):
    """A 0..16 digit scan as an ``image_size`` square gray PIL image
    (bicubic)."""
    from PIL import Image
    pixels = np.clip(image_8x8 * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode='L').resize(
        (image_size, image_size), Image.BICUBIC)


def materialize_atomically(root: str, writer: Callable[[str], None],
                           what: str) -> str:
    """Run ``writer(tmp_dir)`` and rename the result to ``root`` once.

    Safe to call from several processes: the folder is written under a
    temporary name next to ``root`` and renamed into place when complete;
    a complete folder is marked with a ``.complete`` file and reused.

    Args:
        root (str): Target folder.
        writer (callable): Writes the data set into the folder it is given.
        what (str): Name of the data in error messages.

    Returns:
        str: The absolute ``root``.
    """
    root = osp.abspath(root)
    if osp.exists(osp.join(root, _DONE_FLAG)):
        return root
    if osp.exists(root) and os.listdir(root):
        raise FileExistsError(
            f'{root} exists but is not a complete {what} folder (no '
            f'{_DONE_FLAG}); remove it to re-create the demo data.')
    parent = osp.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(root)}.', dir=parent)
    try:
        writer(tmp)
        open(osp.join(tmp, _DONE_FLAG), 'w').close()
        if osp.exists(root):  # an empty folder
            os.rmdir(root)
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished first.
            if not osp.exists(osp.join(root, _DONE_FLAG)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def materialize_demo_digits(root: str, image_size: int = 32) -> str:
    """Write the demo digits under ``root`` unless they are already there.

    Args:
        root (str): Target folder (e.g. ``data/demo_digits``).
        image_size (int): Side of the written PNGs. Defaults to 32.

    Returns:
        str: The absolute ``root``.
    """
    from sklearn.datasets import load_digits

    def write(tmp: str) -> None:
        digits = load_digits()
        os.makedirs(osp.join(tmp, 'meta'))
        for split in ('train', 'val'):
            lines = []
            for idx in demo_digits_split(split):
                label = int(digits.target[idx])
                rel = f'{split}/{DIGIT_CLASSES[label]}/digit_{idx:05d}.png'
                os.makedirs(osp.dirname(osp.join(tmp, rel)), exist_ok=True)
                digit_image(digits.images[idx], image_size).save(
                    osp.join(tmp, rel))
                lines.append(f'{rel} {label}')
            with open(osp.join(tmp, 'meta', f'{split}.txt'), 'w') as f:
                f.write('\n'.join(lines) + '\n')
        with open(osp.join(tmp, 'meta', 'classes.txt'), 'w') as f:
            f.write('\n'.join(DIGIT_CLASSES) + '\n')

    return materialize_atomically(root, write, 'demo-digits')


@DATASETS.register_module()
class DemoDigits(NonEmptyMixin, CustomDataset):
    """The demo digits read by mmpretrain's :class:`CustomDataset`.

    Only adds writing the files on first use (:func:`materialize_demo_digits`),
    the named error of an empty dataset (:class:`NonEmptyMixin`) and of a bad
    label (:func:`check_label_file`); annotation parsing and image loading
    are mmpretrain's own, exactly as for a real ImageNet-style folder.

    Args:
        data_root (str): Folder of the demo data. Defaults to
            ``'data/demo_digits'``.
        split (str): ``'train'`` or ``'val'``; selects ``meta/{split}.txt``
            unless ``ann_file`` is given. Defaults to ``'train'``.
        image_size (int): PNG size used when the files are first written.
        **kwargs: Passed to :class:`CustomDataset` (``pipeline``,
            ``test_mode``, ``indices``, ...).
    """

    METAINFO: Dict[str, Sequence[str]] = {'classes': DIGIT_CLASSES}

    def __init__(self,
                 data_root: str = 'data/demo_digits',
                 split: str = 'train',
                 image_size: int = 32,
                 ann_file: Optional[str] = None,
                 **kwargs) -> None:
        check_split(split)
        materialize_demo_digits(data_root, image_size=image_size)
        kwargs.setdefault('data_prefix', '')
        super().__init__(
            data_root=data_root,
            ann_file=ann_file or f'meta/{split}.txt',
            **kwargs)

    def load_data_list(self) -> list:
        """mmpretrain's, after checking the labels of ``ann_file``."""
        if self.ann_file and self.with_label:
            check_label_file(self.ann_file, len(self.metainfo['classes']))
        return super().load_data_list()


CAPTION_TEMPLATES = ('a handwritten {}.', 'a scan of the digit {}.',
                     'the number {} written by hand.', 'a small gray {}.')


@DATASETS.register_module()
class DemoDigitsCaptions(DemoDigits):
    """The demo digits as an image-text source: captions, no labels.

    Each image's caption is a template over its class name (the template
    chosen by the sample index), e.g. ``'a scan of the digit seven.'``; the
    label is removed, so the sample carries only a text target.
    """

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        label = int(info.pop('gt_label'))
        template = CAPTION_TEMPLATES[idx % len(CAPTION_TEMPLATES)]
        info['caption'] = template.format(DIGIT_CLASSES[label])
        return info
