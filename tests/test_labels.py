"""A label outside ``[0, num_classes)`` or not an integer fails naming the
value, the sample (file and line) and ``num_classes``: in our datasets
(``DemoDigits``) when the annotation file is read, and in M3I's category
target for labels from any other dataset."""
import pytest
import torch
from mmengine.logging import MessageHub
from mmpretrain.registry import DATASETS

from conftest import tiny_m3i
from test_m3i_model import make_batch


def bad_ann_file(demo_root, tmp_path, label):
    """``meta/train.txt``'s first 4 lines, the third one's label replaced
    (``None``: removed)."""
    with open(f'{demo_root}/meta/train.txt') as f:
        lines = [f.readline().split() for _ in range(4)]
    lines[2] = lines[2][:1] + ([] if label is None else [label])
    ann = tmp_path / 'train.txt'
    ann.write_text(''.join(' '.join(line) + '\n' for line in lines))
    return str(ann), lines[2][0]


@pytest.mark.parametrize('label,problem', [
    ('10', r'label 10 is outside 0\.\.9 \(num_classes=10\)'),
    ('-1', r'label -1 is outside 0\.\.9 \(num_classes=10\)'),
    ('seven', r"label 'seven' is not an integer \(num_classes=10\)"),
    ('3.0', r"label '3\.0' is not an integer \(num_classes=10\)"),
    (None, r'no label \(expected "path label"\)'),
])
def test_dataset_label_is_checked_naming_file_line_and_value(
        demo_root, tmp_path, label, problem):
    """It raised the loss's ``IndexError: Target 10 is out of bounds`` at
    the first batch holding the sample (also -1), or a bare
    ``invalid literal for int()``."""
    ann, image = bad_ann_file(demo_root, tmp_path, label)
    with pytest.raises(ValueError, match=rf'{ann}, line 3 \({image}\): '
                       rf'{problem}'):
        DATASETS.build(dict(type='DemoDigits', data_root=demo_root,
                            ann_file=ann))


RANGE = r' in \[0, 5\) \(num_classes of category_embedding\)'


@pytest.mark.parametrize('label,shown,tail', [
    (torch.tensor([5]), 'label 5', RANGE),
    (torch.tensor([-1]), 'label -1', RANGE),
    (torch.tensor([2.5]), 'label 2.5', '$')])
def test_m3i_category_label_is_checked(label, shown, tail):
    """It raised ``IndexError: Target 5 is out of bounds`` from the
    posterior's cross entropy (-1: ``index -1 is out of bounds``); a float
    label was truncated by ``int()`` and trained on."""
    MessageHub.get_current_instance().update_info('max_iters', 100)
    model = tiny_m3i()
    views, samples = make_batch()
    samples[1].set_gt_label(label)
    samples[1].set_metainfo(dict(img_path='data/img_1.png'))
    with pytest.raises(ValueError, match=rf'{shown} of sample '
                       r'data/img_1\.png is not an integer' + tail):
        model.loss(views, samples)
