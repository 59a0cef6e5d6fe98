"""Image and segmentation-map loading whose errors name the file.

mmcv 2.1-2.3.6 ``LoadImageFromFile`` and the ``LoadAnnotations`` of mmdet
3.3-3.5.1 and mmseg 1.2-1.4.2 fail on a zero-byte or undecodable file with
cv2's ``(-215:Assertion failed) !buf.empty()``, naming nothing. The
subclasses here raise ``ValueError`` naming the file (and saying when it is
empty); errors that already name it, e.g. a missing file, pass unchanged.
In a config, prefix the type: ``NamedLoadImageFromFile`` (mmpretrain, mmdet,
mmseg) and ``NamedLoadAnnotations`` (mmdet, mmseg).
"""
import contextlib
import os.path as osp
from typing import Iterator

from mmcv.transforms import LoadImageFromFile
from mmdet.datasets.transforms import LoadAnnotations as DetLoadAnnotations
from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
from mmseg.datasets.transforms import LoadAnnotations as SegLoadAnnotations
from mmseg.registry import TRANSFORMS as MMSEG_TRANSFORMS

from m3i_mm.registry import TRANSFORMS


def load_error_detail(path: str, err: BaseException) -> str:
    """``'the file is empty (0 bytes)'`` for an empty local file, else the
    error's type and message."""
    if osp.isfile(path) and osp.getsize(path) == 0:
        return 'the file is empty (0 bytes)'
    return f'{type(err).__name__}: {err}'


@contextlib.contextmanager
def naming_file(loader: object, results: dict, key: str) -> Iterator[None]:
    """Re-raise an error of loading ``results[key]`` as ``ValueError``
    naming ``type(loader)`` and the file, unless the error names it."""
    try:
        yield
    except Exception as err:
        path = results.get(key)
        if path is None or str(path) in str(err):
            raise
        raise ValueError(f'{type(loader).__name__} cannot read {key} {path}: '
                         f'{load_error_detail(str(path), err)}') from err


@TRANSFORMS.register_module()
@MMDET_TRANSFORMS.register_module()
@MMSEG_TRANSFORMS.register_module()
class NamedLoadImageFromFile(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` whose errors name ``img_path``."""

    def transform(self, results: dict) -> dict:
        with naming_file(self, results, 'img_path'):
            return super().transform(results)


@MMDET_TRANSFORMS.register_module(name='NamedLoadAnnotations')
class NamedLoadDetAnnotations(DetLoadAnnotations):
    """mmdet's ``LoadAnnotations`` whose map errors name ``seg_map_path``."""

    def _load_seg_map(self, results: dict) -> None:
        with naming_file(self, results, 'seg_map_path'):
            super()._load_seg_map(results)


@MMSEG_TRANSFORMS.register_module(name='NamedLoadAnnotations')
class NamedLoadSegAnnotations(SegLoadAnnotations):
    """mmseg's ``LoadAnnotations`` whose map errors name ``seg_map_path``."""

    def _load_seg_map(self, results: dict) -> None:
        with naming_file(self, results, 'seg_map_path'):
            super()._load_seg_map(results)
