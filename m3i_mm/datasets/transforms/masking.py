"""Blockwise patch masks with an exact number of masked patches."""
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from mmpretrain.datasets.transforms import BEiTMaskGenerator

from m3i_mm.registry import TRANSFORMS


def _to_pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    """Turn ``int`` or ``(h, w)`` into a validated pair of positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, Sequence) and not isinstance(value, str)
          and len(value) == 2):
        pair = tuple(value)
    else:
        raise TypeError(f'{name} must be an int or a pair (h, w), '
                        f'got {value!r}')
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
               and v > 0 for v in pair):
        raise ValueError(f'{name} must be positive ints, got {value!r}')
    return int(pair[0]), int(pair[1])


@TRANSFORMS.register_module()
class BlockwiseMaskGenerator(BEiTMaskGenerator):
    """BEiT-style blockwise patch mask with exactly ``round(ratio * L)`` ones.

    The mask is drawn on the patch grid ``(H / p, W / p)`` of a view of
    ``input_size`` pixels. Random rectangular blocks (area in
    ``[min_num_patches, remaining]``, log-uniform aspect ratio in
    ``[min_aspect, max_aspect]``) are added as in BEiT until a block attempt
    fails to add any patch or the target count is reached. BEiT's loop may stop
    short of the target; the remaining patches are then **topped up** by
    masking uniformly random unmasked patches, so every mask has exactly
    ``num_masking_patches = round(mask_ratio * L)`` ones. M3I gathers the
    tokens of each image of a mixed input into fixed-size tensors, which needs
    this exact count.

    Differences from mmpretrain's :class:`BEiTMaskGenerator` (whose
    constructor this class reuses):

    - the grid is derived from the view size in pixels and the patch size;
    - block offsets are drawn from all valid positions (mmpretrain's
      exclusive ``np.random.randint(0, H - h)`` can never touch the last row
      and column) and a block may span the full grid height or width;
    - the loop always terminates (mmpretrain's loops until the exact count
      and can spin forever when the count is unreachable by blocks), followed
      by the top-up above;
    - ``min_num_patches`` is clipped to ``[1, num_masking_patches]`` so small
      grids (e.g. 8x8 patches of a 32x32 view with ``p = 4``) still get
      blocks of a sensible size instead of an empty range.

    **Added Keys:**

    - mask (np.ndarray): ``bool`` array of shape ``(H / p, W / p)``,
      ``True`` = masked (in M3I: the patch is taken from the second image).

    Args:
        input_size (int | Sequence[int]): View size in pixels, an int or
            ``(h, w)``. Must be divisible by ``patch_size``.
        patch_size (int): Patch size ``p`` in pixels. Defaults to 16.
        mask_ratio (float): Fraction of masked patches, in ``[0, 1]``.
            Defaults to 0.5.
        min_num_patches (int): Minimum area (in patches) of one block; clipped
            to ``[1, num_masking_patches]``. Defaults to 16.
        min_aspect (float): Minimum aspect ratio of a block. Defaults to 0.3.
        max_aspect (float, optional): Maximum aspect ratio of a block.
            Defaults to ``1 / min_aspect``.
    """

    def __init__(self,
                 input_size: Union[int, Sequence[int]],
                 patch_size: int = 16,
                 mask_ratio: float = 0.5,
                 min_num_patches: int = 16,
                 min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None) -> None:
        img_h, img_w = _to_pair(input_size, 'input_size')
        if (not isinstance(patch_size, (int, np.integer))
                or isinstance(patch_size, bool) or patch_size <= 0):
            raise ValueError(
                f'patch_size must be a positive int, got {patch_size!r}')
        if img_h % patch_size or img_w % patch_size:
            raise ValueError(f'input_size {(img_h, img_w)} is not divisible '
                             f'by patch_size {patch_size}')
        if not 0. <= float(mask_ratio) <= 1.:
            raise ValueError(
                f'mask_ratio must be in [0, 1], got {mask_ratio!r}')
        if min_aspect <= 0 or (max_aspect is not None
                               and max_aspect < min_aspect):
            raise ValueError(
                'need 0 < min_aspect <= max_aspect, got '
                f'min_aspect={min_aspect!r}, max_aspect={max_aspect!r}')
        grid = (img_h // patch_size, img_w // patch_size)
        num_masking = int(round(float(mask_ratio) * grid[0] * grid[1]))
        super().__init__(
            input_size=grid,
            num_masking_patches=num_masking,
            min_num_patches=max(1, min(int(min_num_patches), num_masking)),
            max_num_patches=None,
            min_aspect=min_aspect,
            max_aspect=max_aspect)
        self.input_size = (img_h, img_w)
        self.patch_size = int(patch_size)
        self.mask_ratio = float(mask_ratio)

    def _mask(self, mask: np.ndarray, max_mask_patches: int) -> int:
        """Add one random block of at most ``max_mask_patches`` new patches.

        Same as BEiT's ``_mask`` (10 attempts), with offsets drawn from every
        position where the block fits.

        Args:
            mask (np.ndarray): Mask to update in place.
            max_mask_patches (int): Maximum number of newly masked patches.

        Returns:
            int: Number of newly masked patches.
        """
        delta = 0
        for _ in range(10):
            target_area = np.random.uniform(self.min_num_patches,
                                            max_mask_patches)
            aspect_ratio = math.exp(np.random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < h <= self.height and 0 < w <= self.width:
                top = np.random.randint(0, self.height - h + 1)
                left = np.random.randint(0, self.width - w + 1)
                block = mask[top:top + h, left:left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_mask_patches:
                    block[...] = True
                    delta = new
                    break
        return delta

    def generate_mask(self) -> np.ndarray:
        """Draw one mask.

        Returns:
            np.ndarray: ``bool`` mask of shape ``(H / p, W / p)`` with exactly
            ``num_masking_patches`` ``True`` entries.
        """
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < self.num_masking_patches:
            delta = self._mask(mask, self.num_masking_patches - count)
            if delta == 0:
                break
            count += delta
        # Top up: BEiT's block loop may stop short of the target.
        missing = self.num_masking_patches - count
        if missing > 0:
            free = np.flatnonzero(~mask)
            mask.flat[np.random.choice(free, missing, replace=False)] = True
        return mask

    def transform(self, results: dict) -> dict:
        """Add a blockwise mask.

        Args:
            results (dict): Result dict from the previous pipeline.

        Returns:
            dict: ``results`` with the added key ``mask``.
        """
        results['mask'] = self.generate_mask()
        return results

    def __repr__(self) -> str:
        repr_str = self.__class__.__name__
        repr_str += f'(input_size={self.input_size}, '
        repr_str += f'patch_size={self.patch_size}, '
        repr_str += f'grid=({self.height}, {self.width}), '
        repr_str += f'mask_ratio={self.mask_ratio}, '
        repr_str += f'num_masking_patches={self.num_masking_patches}, '
        repr_str += f'min_num_patches={self.min_num_patches}, '
        repr_str += f'log_aspect_ratio={self.log_aspect_ratio})'
        return repr_str
