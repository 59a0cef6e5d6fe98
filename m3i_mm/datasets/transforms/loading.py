"""Image and segmentation-map loading whose errors name the file.

mmcv 2.1-2.3.6 ``LoadImageFromFile`` and the ``LoadAnnotations`` of mmdet
3.3-3.5.1 and mmseg 1.2-1.4.2 fail on a zero-byte or undecodable file with
cv2's ``(-215:Assertion failed) !buf.empty()``, naming nothing. The
subclasses here raise ``ValueError`` naming the file (and saying when it is
empty); errors that already name it, e.g. a missing file, pass unchanged.
In a config, prefix the type: ``NamedLoadImageFromFile`` (mmpretrain, mmdet,
mmseg) and ``NamedLoadAnnotations`` (mmdet, mmseg).

Decoding limit: an image of more than ``max_pixels`` pixels (default Pillow's
``PIL.Image.MAX_IMAGE_PIXELS``, about 89.5 million) is refused from its
header, before decoding, with :class:`ImageTooLargeError` naming the file and
its size (:func:`open_image_header`). cv2 decodes up to 2**30 pixels
(``CV_IO_MAX_IMAGE_PIXELS``): a 20000 x 20000 PNG took 49 s and 4.4 GB.
"""
import contextlib
import os.path as osp
import warnings
from typing import BinaryIO, Iterator, Optional, Union

from PIL import Image

from mmcv.transforms import LoadImageFromFile
from mmdet.datasets.transforms import LoadAnnotations as DetLoadAnnotations
from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
from mmseg.datasets.transforms import LoadAnnotations as SegLoadAnnotations
from mmseg.registry import TRANSFORMS as MMSEG_TRANSFORMS

from m3i_mm.registry import TRANSFORMS


# Pillow's own limit, read when m3i_mm is imported.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageTooLargeError(ValueError):
    """An image has more pixels than allowed; names the file and its size."""


def open_image_header(source: Union[str, BinaryIO], path: str,
                      max_pixels: Optional[int]) -> Image.Image:
    """Open an image with Pillow, reading only its header, and refuse it if
    it has more than ``max_pixels`` pixels.

    Pillow's own check (``Image.open``: a warning above
    ``Image.MAX_IMAGE_PIXELS``, an error above twice that) stays; its
    warning is silenced here and its error named like ours.

    Args:
        source (str | file): The file or its bytes as a binary stream.
        path (str): How errors name the file.
        max_pixels (int, optional): Most pixels (width x height); None: no
            limit of ours.

    Returns:
        PIL.Image.Image: The lazily opened image (nothing decoded yet).

    Raises:
        ImageTooLargeError: Over ``max_pixels`` or Pillow's error limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as err:
            raise ImageTooLargeError(
                f'{path} is too large to decode (Pillow, from its header): '
                f'{err}; raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels '
                f'of the loading transform if it is intended') from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageTooLargeError(
            f'{path} is {width}x{height} = {width * height} pixels, more '
            f'than max_pixels={max_pixels} (checked from its header, not '
            f'decoded); raise max_pixels of the loading transform if it is '
            f'intended')
    return img


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
    """mmcv's ``LoadImageFromFile`` whose errors name ``img_path``, and
    which refuses a local image of more than ``max_pixels`` pixels from its
    header (:func:`open_image_header`; a file Pillow cannot identify is left
    to the decoder, a remote one is not checked).

    Args:
        max_pixels (int, optional): Most pixels; None: no limit. Defaults to
            :data:`DEFAULT_MAX_PIXELS`.
        **kwargs: Passed to mmcv's ``LoadImageFromFile``.
    """

    def __init__(self,
                 *args,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_pixels = max_pixels

    def transform(self, results: dict) -> dict:
        with naming_file(self, results, 'img_path'):
            path = str(results['img_path'])
            if self.max_pixels is not None and osp.isfile(path):
                try:
                    open_image_header(path, path, self.max_pixels).close()
                except (Image.UnidentifiedImageError, OSError):
                    pass  # the decoder's error, named by naming_file
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
