"""Two augmented views per image with their geometry (M3I, Sec. 3.4)."""
from typing import Callable, List, Optional, Sequence, Tuple, Union

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform, Compose
from mmengine.registry import DefaultScope
from mmpretrain.datasets.transforms import RandomResizedCrop

from m3i_mm.registry import TRANSFORMS
from .masking import _to_pair

Transform = Union[dict, Callable[[dict], dict]]


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
    resizes or flips); a change of the view shape raises an error.

    **Required Keys:**

    - img (np.ndarray): ``(H, W)`` or ``(H, W, C)`` image.

    **Modified Keys:**

    - img: the list ``[target_view, other_view]`` of ``(size, size[, C])``
      arrays with the input dtype (``uint8`` for loaded images).
    - img_shape: ``(size, size)``.

    **Added Keys:**

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
                 backend: str = 'pillow') -> None:
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

    def _make_view(self, img: np.ndarray, pipeline: Optional[Compose],
                   name: str) -> Tuple[np.ndarray, np.ndarray, bool]:
        """Crop, resize, flip and colour-augment one view.

        Args:
            img (np.ndarray): Original image.
            pipeline (Compose, optional): Photometric transforms of the view.
            name (str): View name used in error messages.

        Returns:
            tuple: The view, its box ``(x0, y0, x1, y1)`` (float32) and
            whether it was flipped.
        """
        top, left, crop_h, crop_w = self.cropper.rand_crop_params(img)
        # mmcv boxes are inclusive: pixels left..left + crop_w - 1.
        view = mmcv.imcrop(
            img,
            np.array([left, top, left + crop_w - 1, top + crop_h - 1]))
        view = mmcv.imresize(
            view, (self.size[1], self.size[0]),
            interpolation=self.cropper.interpolation,
            backend=self.cropper.backend)
        flip = bool(np.random.rand() < self.flip_prob)
        if flip:
            view = mmcv.imflip(view, direction='horizontal')
        if pipeline is not None:
            out = pipeline(dict(img=view, img_shape=view.shape[:2]))
            if out is None:
                raise RuntimeError(f'the {name} pipeline dropped the sample '
                                   '(a transform returned None)')
            if out['img'].shape != view.shape:
                raise ValueError(
                    f'the {name} pipeline changed the view shape from '
                    f"{view.shape} to {out['img'].shape}; only photometric "
                    'transforms are allowed there')
            view = out['img']
        box = np.array([left, top, left + crop_w, top + crop_h],
                       dtype=np.float32)
        return view, box, flip

    def transform(self, results: dict) -> dict:
        """Make the two views.

        Args:
            results (dict): Result dict with ``img``.

        Returns:
            dict: ``results`` with ``img`` as ``[target_view, other_view]``
            and ``img_shape``, ``view_boxes``, ``view_flips`` added.
        """
        img = results.get('img')
        if not isinstance(img, np.ndarray):
            raise TypeError("M3IViews needs results['img'] to be an "
                            f'np.ndarray, got {type(img).__name__}')
        if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError("M3IViews needs results['img'] of shape (H, W) "
                             f'or (H, W, C), got {img.shape}')
        target, box_t, flip_t = self._make_view(img, self.target_pipeline,
                                                'target_view_transforms')
        other, box_o, flip_o = self._make_view(img, self.other_pipeline,
                                               'other_view_transforms')
        results['img'] = [target, other]
        results['img_shape'] = self.size
        results['view_boxes'] = np.stack([box_t, box_o])
        results['view_flips'] = np.array([flip_t, flip_o], dtype=np.bool_)
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
        repr_str += f'other_view_transforms={self.other_pipeline})'
        return repr_str
