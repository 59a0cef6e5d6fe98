"""Labels checked where they enter, naming the value, sample and
``num_classes``.

Without the check a label ``>= num_classes`` (or ``-1``) failed at the first
batch holding it with the loss's ``IndexError: Target N is out of bounds``,
and a non-integer one with a bare ``invalid literal for int()`` (mmpretrain
1.2 ``CustomDataset.load_data_list``).
"""
import re

from mmengine.fileio import list_from_file

_INTEGER = re.compile(r'[+-]?\d+')


def check_label_file(ann_file: str, num_classes: int) -> None:
    """Check the ``path label`` lines of a classification annotation file.

    Lines are split as mmpretrain's ``CustomDataset`` does
    (``line.strip().rsplit(' ', 1)``).

    Args:
        ann_file (str): The annotation file.
        num_classes (int): Labels must be integers in ``[0, num_classes)``.

    Raises:
        ValueError: A line without a label, or whose label is not such an
            integer; names the file, line, image and value.
    """
    for line_no, line in enumerate(list_from_file(ann_file), start=1):
        parts = line.strip().rsplit(' ', 1)
        where = f'{ann_file}, line {line_no} ({parts[0]})'
        if len(parts) != 2:
            raise ValueError(f'{where}: no label (expected "path label")')
        label = parts[1]
        if not _INTEGER.fullmatch(label):
            raise ValueError(f'{where}: label {label!r} is not an integer '
                             f'(num_classes={num_classes})')
        if not 0 <= int(label) < num_classes:
            raise ValueError(f'{where}: label {int(label)} is outside '
                             f'0..{num_classes - 1} '
                             f'(num_classes={num_classes})')
