"""Embedded image-text retrieval demo data in Flickr30K's Karpathy layout.

The demo digits (:mod:`.digits`) with several captions per image, written
once by :func:`materialize_demo_digits_karpathy` in the layout that
mmpretrain's :class:`Flickr30kRetrieval` reads (Karpathy & Fei-Fei's
``dataset_flickr30k.json``)::

    data/demo_digits_karpathy/
        annotations/dataset_demo_digits.json
        images/digit_00004.png ...

Images: the 359 demo ``val`` digits, all in the Karpathy ``'test'`` split
(the demo ``train`` digits are left out: retrieval only evaluates).
Captions: each of :data:`CAPTION_TEMPLATES` over the class name, tagged with
the scan's index (``'a handwritten seven (scan 4).'``), so that no two
images share a caption and recall ranks are not all ties.
"""
import json
import os
import os.path as osp

from .digits import (CAPTION_TEMPLATES, DIGIT_CLASSES, demo_digits_split,
                     digit_image, materialize_atomically)

KARPATHY_ANN_FILE = 'annotations/dataset_demo_digits.json'


def demo_caption(template: str, label: int, idx: int) -> str:
    """Caption of scan ``idx`` of class ``label``: ``template`` over the
    class name, tagged with the index (``'a handwritten seven (scan 4).'``).
    """
    return template.format(f'{DIGIT_CLASSES[label]} (scan {idx})')


def materialize_demo_digits_karpathy(root: str, image_size: int = 32) -> str:
    """Write the Karpathy-layout retrieval demo under ``root`` unless it is
    already there.

    Args:
        root (str): Target folder (e.g. ``data/demo_digits_karpathy``).
        image_size (int): Side of the written PNGs. Defaults to 32.

    Returns:
        str: The absolute ``root``.
    """
    from sklearn.datasets import load_digits

    def write(tmp: str) -> None:
        digits = load_digits()
        os.makedirs(osp.join(tmp, 'images'))
        os.makedirs(osp.join(tmp, 'annotations'))
        images, sent_id = [], 0
        for img_id, idx in enumerate(demo_digits_split('val')):
            label = int(digits.target[idx])
            filename = f'digit_{idx:05d}.png'
            digit_image(digits.images[idx], image_size).save(
                osp.join(tmp, 'images', filename))
            sentences = []
            for template in CAPTION_TEMPLATES:
                sentences.append(
                    dict(raw=demo_caption(template, label, idx),
                         imgid=img_id, sentid=sent_id))
                sent_id += 1
            images.append(
                dict(filename=filename, imgid=img_id, split='test',
                     sentids=[s['sentid'] for s in sentences],
                     sentences=sentences))
        with open(osp.join(tmp, KARPATHY_ANN_FILE), 'w') as f:
            json.dump(dict(images=images, dataset='demo_digits'), f)

    return materialize_atomically(root, write, 'demo-digits-karpathy')
