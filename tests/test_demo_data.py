"""The embedded demo digits: documented counts, labels and pixels."""
import os.path as osp
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from m3i_mm.datasets import (DIGIT_CLASSES, DemoDigits, demo_digits_split,
                             materialize_demo_digits)


def read_list(root, split):
    with open(osp.join(root, 'meta', f'{split}.txt')) as f:
        return [line.split() for line in f.read().splitlines()]


def test_documented_split_counts(demo_root):
    train, val = read_list(demo_root, 'train'), read_list(demo_root, 'val')
    assert (len(train), len(val)) == (1438, 359)
    names = {osp.basename(p) for p, _ in train} | {
        osp.basename(p) for p, _ in val}
    assert len(names) == 1797  # disjoint and complete


def test_labels_and_class_folders_match_sklearn(demo_root):
    target = load_digits().target
    for split in ('train', 'val'):
        rows = read_list(demo_root, split)
        indices = demo_digits_split(split)
        assert [int(label) for _, label in rows] == target[indices].tolist()
        for path, label in rows:
            assert path.split('/')[1] == DIGIT_CLASSES[int(label)]
    counts = Counter(int(label) for _, label in read_list(demo_root, 'val'))
    assert counts == Counter(target[4::5].tolist())


def test_pixels_are_the_real_scans(demo_root):
    digits = load_digits()
    path, label = read_list(demo_root, 'train')[0]
    img = np.asarray(Image.open(osp.join(demo_root, path)))
    assert img.shape == (32, 32) and img.dtype == np.uint8
    # Averaging each 4x4 block recovers the 8x8 scan (0..16 -> 0..255).
    blocks = img.reshape(8, 4, 8, 4).mean(axis=(1, 3))
    expected = digits.images[0] * 255 / 16
    assert int(label) == digits.target[0]
    # Bicubic upsampling blurs the edges, but the scan is clearly the same.
    assert np.corrcoef(blocks.ravel(), expected.ravel())[0, 1] > 0.97
    assert np.abs(blocks - expected).mean() < 20


def test_dataset_reads_files_through_custom_dataset(demo_root):
    ds = DemoDigits(
        data_root=demo_root,
        split='val',
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='PackInputs')])
    assert len(ds) == 359
    assert ds.metainfo['classes'] == DIGIT_CLASSES
    sample = ds[0]
    assert tuple(sample['inputs'].shape) == (3, 32, 32)
    assert sample['data_samples'].gt_label.item() == load_digits().target[4]


def test_materialize_is_idempotent_and_checks_folder(demo_root, tmp_path):
    assert materialize_demo_digits(demo_root) == demo_root
    junk = tmp_path / 'not_demo'
    junk.mkdir()
    (junk / 'other.txt').write_text('x')
    with pytest.raises(FileExistsError, match='not_demo'):
        materialize_demo_digits(str(junk))
    with pytest.raises(ValueError, match="'test'"):
        DemoDigits(data_root=demo_root, split='test')
