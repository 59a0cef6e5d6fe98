"""Two augmented views per image with their geometry (M3I, Sec. 3.4)."""
import io
import math
from types import SimpleNamespace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform, Compose
from mmengine import fileio
from mmengine.registry import DefaultScope
from PIL import Image
from mmpretrain.datasets.transforms import RandomResizedCrop

from m3i_mm.registry import TRANSFORMS
from .loading import (DEFAULT_MAX_PIXELS, ImageTooLargeError,
                      load_error_detail, open_image_header)
from .masking import _to_pair

Transform = Union[dict, Callable[[dict], dict]]
Box = Tuple[int, int, int, int]  # top, left, height, width

# JPEG can be decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling).
DECODE_REDUCTIONS = (8, 4, 2)
PIL_INTERPOLATION = {
    'nearest': Image.NEAREST,
    'bilinear': Image.BILINEAR,
    'bicubic': Image.BICUBIC,
    'box': Image.BOX,
    'lanczos': Image.LANCZOS,
    'hamming': Image.HAMMING,
}
# EXIF orientation (tag 0x0112) -> the transpose that shows the image
# upright, as Pillow's ``ImageOps.exif_transpose`` (Pillow 13); cv2's
# ``imdecode`` (mmcv's ``LoadImageFromFile``) applies it too.
EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def decode_reduction(crops: Sequence[Box], size: Tuple[int, int]) -> int:
    """Largest JPEG decode reduction that keeps every crop >= the view size.

    Args:
        crops (Sequence[tuple]): ``(top, left, h, w)`` crop boxes in pixels
            of the full-resolution image.
        size (tuple): View size ``(h, w)``.

    Returns:
        int: 8, 4, 2 or 1; decoding at ``1 / r`` scale then only skips pixels
        the resize to ``size`` would average away anyway.
    """
    room = min(min(h / size[0], w / size[1]) for _, _, h, w in crops)
    return next((r for r in DECODE_REDUCTIONS if r <= room), 1)


def _build_pipeline(transforms: Optional[Sequence[Transform]],
                    name: str) -> Optional[Compose]:
    """Build a photometric sub-pipeline from configs or callables.

    Top-level configs are built with mmpretrain's ``TRANSFORMS``; when no
    default scope is set, ``'mmpretrain'`` is used while building so that
    wrappers from mmcv (``RandomApply``) also find mmpretrain's transforms
    (``ColorJitter``, ``GaussianBlur``, ...) without a runner.
    """
    if transforms is None:
        return None
    if isinstance(transforms, dict) or not isinstance(transforms, Sequence):
        raise TypeError(f'{name} must be a list of transform configs or '
                        f'callables, got {type(transforms).__name__}')
    scope = None if DefaultScope.get_current_instance() else 'mmpretrain'
    with DefaultScope.overwrite_default_scope(scope):
        built = [
            TRANSFORMS.build(t) if isinstance(t, dict) else t
            for t in transforms
        ]
    for t in built:
        if not callable(t):
            raise TypeError(f'{name} holds a non-callable {t!r}')
    return Compose(built)


@TRANSFORMS.register_module()
class M3IViews(BaseTransform):
    """Make the target view and the other view of an image for M3I.

    Each view is a random crop sampled as in mmpretrain's
    :class:`RandomResizedCrop` (area fraction ``crop_scale``, log-uniform
    aspect ratio ``crop_ratio``, centre-crop fallback), resized to
    ``size`` x ``size``, flipped horizontally with probability ``flip_prob``
    and then passed through its own photometric pipeline.

    - View 0, the **target view**, is encoded by the momentum target encoder.
      An image used as the *first* image of a mixed input takes this same
      view as its input (intra-view prediction).
    - View 1, the **other view**, is the input of an image used as the
      *second* image of a mixed input, which predicts the target view
      (inter-view prediction).

    Geometry: view ``k`` is the region ``[x0, x1) x [y0, y1)`` of the original
    image (``view_boxes[k] = (x0, y0, x1, y1)``, pixel-edge coordinates, i.e.
    pixel ``i`` spans ``[i, i + 1)``) resized to the view, so the horizontal
    view fraction ``u`` in ``[0, 1]`` lies at original ``x = x0 + u * (x1 -
    x0)`` *before* flipping; when ``view_flips[k]`` is true, view fraction
    ``u`` shows the content at ``1 - u`` of the unflipped view. Vertical
    coordinates map the same way, never flipped. This matches
    :func:`m3i_mm.models.utils.view_geometry.target_positions_in_input`.

    The photometric pipelines must not change the geometry (no crops,
    resizes or flips); a change of the view shape raises an error. With no
    photometric pipelines the views are left for the batched photometric
    augmentation on the training device (:class:`M3IDataPreprocessor`).

    **Decoding here.** Without ``img`` but with ``img_path`` (no
    ``LoadImageFromFile`` before it) the transform decodes the file itself
    with Pillow, like ``LoadImageFromFile`` to a BGR ``uint8`` array of 3
    channels: it samples both crops from the image size first, decodes a JPEG
    at 1/2, 1/4 or 1/8 scale when both crops stay at least ``size`` there
    (:func:`decode_reduction`), and crops and resizes each view in one
    Pillow call (``Image.resize(box=...)``), without copying the whole
    image. Needs ``backend='pillow'``. The EXIF orientation is applied as
    ``LoadImageFromFile`` does (crops are sampled on the upright size), and
    a file of more than ``max_pixels`` pixels is refused from its header.

    **Required Keys:**

    - img (np.ndarray): ``(H, W)`` or ``(H, W, C)`` image, or
    - img_path (str): the image file (decoded here, see above).

    **Modified Keys:**

    - img: the list ``[target_view, other_view]`` of ``(size, size[, C])``
      arrays with the input dtype (``uint8`` for loaded images), plus the
      target view before its photometric transforms with
      ``geometric_target_view``.
    - img_shape: ``(size, size)``.

    **Added Keys:**

    - ori_shape (tuple): ``(H, W)`` of the file, when decoded here.

    - view_boxes (np.ndarray): ``float32`` ``(2, 4)``, crop boxes
      ``(x0, y0, x1, y1)`` in original pixel coordinates, ``x1``/``y1``
      exclusive, row 0 = target view, row 1 = other view.
    - view_flips (np.ndarray): ``bool`` ``(2,)``, whether each view was
      flipped horizontally after resizing.

    Args:
        size (int | Sequence[int]): Output view size, an int or ``(h, w)``.
        crop_scale (Sequence[float]): Range of the crop area as a fraction of
            the image area. Defaults to ``(0.2, 1.0)``.
        crop_ratio (Sequence[float]): Range of the crop aspect ratio (w / h).
            Defaults to ``(3 / 4, 4 / 3)``.
        flip_prob (float): Probability of a horizontal flip, per view.
            Defaults to 0.5.
        target_view_transforms (list[dict | callable], optional): Photometric
            transforms applied to the target view only (e.g. a weak
            ``ColorJitter``). Defaults to None.
        other_view_transforms (list[dict | callable], optional): Photometric
            transforms applied to the other view only (e.g. ``ColorJitter``,
            ``RandomGrayscale``, ``GaussianBlur``, ``Solarize`` inside
            ``RandomApply``). Defaults to None.
        max_attempts (int): Crop sampling attempts before the centre-crop
            fallback. Defaults to 10.
        interpolation (str): Resize interpolation, see :func:`mmcv.imresize`.
            Defaults to ``'bicubic'``.
        backend (str): Resize backend, ``'cv2'`` or ``'pillow'``. Defaults to
            ``'pillow'`` (as torchvision's ``RandomResizedCrop``).
        backend_args (dict, optional): File backend arguments for decoding
            here (see :func:`mmengine.fileio.get`). Defaults to None.
        max_pixels (int, optional): Most pixels of a file decoded here;
            None: only Pillow's own limit. Defaults to Pillow's
            ``Image.MAX_IMAGE_PIXELS``.
        geometric_target_view (bool): Append the target view before
            ``target_view_transforms`` (crop, resize and flip only) as a
            third image, for targets that must not see its photometric
            augmentation (``PixelTarget`` / ``FrozenImageTarget`` with
            ``geometric_view=True``). Defaults to False.
    """

    def __init__(self,
                 size: Union[int, Sequence[int]],
                 crop_scale: Tuple[float, float] = (0.2, 1.0),
                 crop_ratio: Tuple[float, float] = (3. / 4., 4. / 3.),
                 flip_prob: float = 0.5,
                 target_view_transforms: Optional[List[Transform]] = None,
                 other_view_transforms: Optional[List[Transform]] = None,
                 max_attempts: int = 10,
                 interpolation: str = 'bicubic',
                 backend: str = 'pillow',
                 backend_args: Optional[dict] = None,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                 geometric_target_view: bool = False) -> None:
        self.size = _to_pair(size, 'size')
        if not (len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1]
                <= 1):
            raise ValueError('crop_scale must be (min, max) with '
                             f'0 < min <= max <= 1, got {crop_scale!r}')
        if not (len(crop_ratio) == 2 and 0 < crop_ratio[0] <= crop_ratio[1]):
            raise ValueError('crop_ratio must be (min, max) with '
                             f'0 < min <= max, got {crop_ratio!r}')
        if not 0. <= flip_prob <= 1.:
            raise ValueError(f'flip_prob must be in [0, 1], got {flip_prob!r}')
        if backend not in ('cv2', 'pillow'):
            raise ValueError(
                f"backend must be 'cv2' or 'pillow', got {backend!r}")
        self.flip_prob = float(flip_prob)
        self.backend_args = backend_args
        self.max_pixels = max_pixels
        self.geometric_target_view = bool(geometric_target_view)
        # Only its crop sampling is used; cropping is done here so that the
        # crop box can be recorded.
        self.cropper = RandomResizedCrop(
            scale=self.size,
            crop_ratio_range=tuple(crop_scale),
            aspect_ratio_range=tuple(crop_ratio),
            max_attempts=max_attempts,
            interpolation=interpolation,
            backend=backend)
        self.target_pipeline = _build_pipeline(target_view_transforms,
                                               'target_view_transforms')
        self.other_pipeline = _build_pipeline(other_view_transforms,
                                              'other_view_transforms')

    def _photometric(self, view: np.ndarray, pipeline: Optional[Compose],
                     name: str) -> np.ndarray:
        """Run one view's photometric pipeline (if any) on it."""
        if pipeline is None:
            return view
        out = pipeline(dict(img=view, img_shape=view.shape[:2]))
        if out is None:
            raise RuntimeError(f'the {name} pipeline dropped the sample '
                               '(a transform returned None)')
        if out['img'].shape != view.shape:
            raise ValueError(
                f'the {name} pipeline changed the view shape from '
                f"{view.shape} to {out['img'].shape}; only photometric "
                'transforms are allowed there')
        return out['img']

    def _crop_array(self, img: np.ndarray, crop: Box) -> np.ndarray:
        """Crop and resize one view of a decoded array."""
        top, left, crop_h, crop_w = crop
        # mmcv boxes are inclusive: pixels left..left + crop_w - 1.
        view = mmcv.imcrop(
            img,
            np.array([left, top, left + crop_w - 1, top + crop_h - 1]))
        return mmcv.imresize(
            view, (self.size[1], self.size[0]),
            interpolation=self.cropper.interpolation,
            backend=self.cropper.backend)

    def _decode_views(self, results: dict) -> Tuple[List[np.ndarray],
                                                    List[Box]]:
        """Decode ``img_path`` and crop both views (see the class doc)."""
        if self.cropper.backend != 'pillow':
            raise ValueError("M3IViews decodes img_path only with "
                             f"backend='pillow', got {self.cropper.backend!r}")
        path = results['img_path']
        try:
            img = open_image_header(
                io.BytesIO(fileio.get(path, self.backend_args)), path,
                self.max_pixels)
            transpose = EXIF_TRANSPOSE.get(
                img.getexif().get(EXIF_ORIENTATION))
            width, height = stored_w, stored_h = img.size
            if transpose in (Image.Transpose.TRANSPOSE,
                             Image.Transpose.TRANSVERSE,
                             Image.Transpose.ROTATE_90,
                             Image.Transpose.ROTATE_270):
                width, height = height, width
            crops = [
                self.cropper.rand_crop_params(
                    SimpleNamespace(shape=(height, width))) for _ in range(2)
            ]
            reduction = decode_reduction(crops, self.size)
            if reduction > 1 and img.format == 'JPEG':
                img.draft('RGB', (math.ceil(stored_w / reduction),
                                  math.ceil(stored_h / reduction)))
            img = img.convert('RGB')
            if transpose is not None:
                img = img.transpose(transpose)
        except ImageTooLargeError:
            raise
        except (OSError, ValueError) as err:
            raise OSError(f'M3IViews cannot decode {path}: '
                          f'{load_error_detail(path, err)}') from err
        sx, sy = width / img.size[0], height / img.size[1]
        resample = PIL_INTERPOLATION[self.cropper.interpolation]
        views = []
        for top, left, crop_h, crop_w in crops:
            box = (left / sx, top / sy, (left + crop_w) / sx,
                   (top + crop_h) / sy)
            view = img.resize((self.size[1], self.size[0]), resample, box=box)
            views.append(np.asarray(view)[..., ::-1])  # RGB -> BGR
        results['ori_shape'] = (height, width)
        return views, crops

    def transform(self, results: dict) -> dict:
        """Make the two views.

        Args:
            results (dict): Result dict with ``img`` or ``img_path``.

        Returns:
            dict: ``results`` with ``img`` as ``[target_view, other_view]``
            and ``img_shape``, ``view_boxes``, ``view_flips`` added.

        Raises:
            OSError: ``img_path`` cannot be decoded (the message names it).
        """
        img = results.get('img')
        if img is None and 'img_path' in results:
            views, crops = self._decode_views(results)
        else:
            if not isinstance(img, np.ndarray):
                raise TypeError("M3IViews needs results['img'] to be an "
                                f'np.ndarray, got {type(img).__name__}')
            if img.ndim not in (2, 3) or img.shape[0] < 1 or \
                    img.shape[1] < 1:
                raise ValueError("M3IViews needs results['img'] of shape "
                                 f'(H, W) or (H, W, C), got {img.shape}')
            crops = [self.cropper.rand_crop_params(img) for _ in range(2)]
            views = [self._crop_array(img, crop) for crop in crops]
        pipelines = ((self.target_pipeline, 'target_view_transforms'),
                     (self.other_pipeline, 'other_view_transforms'))
        out, flips, geometric = [], [], None
        for view, (pipeline, name) in zip(views, pipelines):
            flips.append(bool(np.random.rand() < self.flip_prob))
            if flips[-1]:
                view = view[:, ::-1]
            view = np.ascontiguousarray(view)
            if self.geometric_target_view and not out:  # the target view
                geometric = view.copy()  # transforms may work in place
            out.append(self._photometric(view, pipeline, name))
        if geometric is not None:
            out.append(geometric)
        results['img'] = out
        results['img_shape'] = self.size
        results['view_boxes'] = np.array(
            [[left, top, left + w, top + h] for top, left, h, w in crops],
            dtype=np.float32)
        results['view_flips'] = np.array(flips, dtype=np.bool_)
        return results

    def __repr__(self) -> str:
        repr_str = self.__class__.__name__
        repr_str += f'(size={self.size}, '
        repr_str += f'crop_scale={self.cropper.crop_ratio_range}, '
        repr_str += f'crop_ratio={self.cropper.aspect_ratio_range}, '
        repr_str += f'flip_prob={self.flip_prob}, '
        repr_str += f'interpolation={self.cropper.interpolation}, '
        repr_str += f'backend={self.cropper.backend}, '
        repr_str += f'target_view_transforms={self.target_pipeline}, '
        repr_str += f'other_view_transforms={self.other_pipeline}, '
        repr_str += f'geometric_target_view={self.geometric_target_view})'
        return repr_str
