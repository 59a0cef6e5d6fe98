"""The input side t_x of M3I: which views enter the backbone, mixed how."""
from typing import List, NamedTuple

import torch
import torch.nn as nn

from m3i_mm.registry import MODELS
from .mixing import derangement, mix_images

VIEW_CHOICES = ('same', 'different')
MODES = ('mix', 'mask', 'full')


class MixedBatch(NamedTuple):
    """What the backbone sees and how to read it back.

    Attributes:
        images (Tensor): (N, C, H, W) backbone input.
        sigma (Tensor): (N,) the second image of input ``i`` is ``sigma[i]``
            (``None`` unless mode is ``'mix'``).
        first_view (int): View index (0 = target view, 1 = other view) the
            first image entered with.
        second_view (int): Same for the second image.
    """
    images: torch.Tensor
    sigma: torch.Tensor
    first_view: int
    second_view: int


@MODELS.register_module()
class MultiInputMixer(nn.Module):
    """Build the backbone input from two views per image and a patch mask.

    Each image carries two views: view 0 is its target view (encoded by the
    target encoder) and view 1 another augmented view. ``target_views``
    chooses, per Table 14 of the paper, whether the first and second image of
    a mixed input enter with the same view as their target (intra-view) or a
    different one (inter-view); the paper's default is
    ``('same', 'different')``.

    Modes:
        - ``'mix'`` (M3I): ``x = (1 - M) ⊙ first[i] + M ⊙ second[σ(i)]``
          with a random derangement σ of the batch.
        - ``'mask'`` ("w/o mix", single input): masked patches are filled with
          ``fill_value`` (0 = the mean pixel after normalisation); with
          ``drop_masked`` the encoder also leaves them out (MAE, SiameseIM),
          see :func:`~m3i_mm.models.utils.vit_visible_tokens`.
        - ``'full'``: the first image's view, unmasked.

    Args:
        patch_size (int): Mask granularity ``p`` in pixels.
        mode (str): One of ``'mix'``, ``'mask'``, ``'full'``.
        target_views (tuple[str, str]): ``'same'``/``'different'`` for the
            first and the second image.
        fill_value (float): Pixel value of masked patches in ``'mask'`` mode.
        drop_masked (bool): In ``'mask'`` mode, tell the algorithm to encode
            only the visible patches (ViT backbones). Defaults to False.
    """

    def __init__(self,
                 patch_size: int,
                 mode: str = 'mix',
                 target_views: List[str] = ('same', 'different'),
                 fill_value: float = 0.0,
                 drop_masked: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        if len(target_views) != 2 or any(v not in VIEW_CHOICES
                                         for v in target_views):
            raise ValueError(f'target_views must be two of {VIEW_CHOICES}, '
                             f'got {target_views!r}')
        if drop_masked and mode != 'mask':
            raise ValueError(f'drop_masked needs mode="mask", got {mode!r}')
        self.patch_size = patch_size
        self.mode = mode
        self.target_views = tuple(target_views)
        self.fill_value = fill_value
        self.drop_masked = drop_masked

    @property
    def first_view(self) -> int:
        return VIEW_CHOICES.index(self.target_views[0])

    @property
    def second_view(self) -> int:
        return VIEW_CHOICES.index(self.target_views[1])

    def forward(self, views: List[torch.Tensor],
                mask: torch.Tensor) -> MixedBatch:
        """Mix a batch.

        Args:
            views (list[Tensor]): ``[target views, other views]``, each
                (N, C, H, W).
            mask (Tensor): (N, H/p, W/p) patch mask, 1 = second image / masked.

        Returns:
            MixedBatch: The input and the bookkeeping to read it back.
        """
        if len(views) != 2:
            raise ValueError(f'expected 2 views per image, got {len(views)}')
        first = views[self.first_view]
        if self.mode == 'full':
            return MixedBatch(first, None, self.first_view, self.second_view)
        if self.mode == 'mask':
            filled = torch.full_like(first, self.fill_value)
            identity = torch.arange(first.shape[0], device=first.device)
            images = mix_images(first, filled, mask, identity,
                                self.patch_size)
            return MixedBatch(images, None, self.first_view, self.second_view)
        sigma = derangement(first.shape[0], device=first.device)
        images = mix_images(first, views[self.second_view], mask, sigma,
                            self.patch_size)
        return MixedBatch(images, sigma, self.first_view, self.second_view)
