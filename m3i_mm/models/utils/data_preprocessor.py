"""Data preprocessor that augments the M3I views batched on the device."""
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmpretrain.models.utils.data_preprocessor import SelfSupDataPreprocessor

from m3i_mm.registry import MODELS
from .batch_augment import build_batch_augment
from .sample_fields import Tokenizer, num_masked, prepare_training_samples


@MODELS.register_module()
class M3IDataPreprocessor(SelfSupDataPreprocessor):
    """``SelfSupDataPreprocessor`` plus per-view batched photometric
    augmentation during training.

    Each view of the batch (``inputs[k]``, ``(N, 3, H, W)``) gets its own
    photometric pipeline ``view_transforms[k]``, written as mmpretrain
    transform configs (the same lists that ``M3IViews`` takes for per-image
    augmentation) and run as kornia augmentations on the device, with random
    parameters drawn per sample (:func:`build_batch_augment`). The order is:
    BGR -> RGB (``to_rgb``), scale to ``[0, 1]``, augment, back to 0-255,
    normalise with ``mean``/``std``. Evaluation (``training=False``) skips the
    augmentation.

    With ``geometric_target_view`` the batch also carries the target view
    (view 0) before its photometric augmentation, normalised the same way,
    as ``inputs[2]``: the view of targets that must not see a random colour
    change, i.e. pixel targets of inter-view prediction and frozen teachers
    (``PixelTarget`` / ``FrozenImageTarget`` with ``geometric_view=True``;
    issue 21, items 6 and 7).

    Args:
        view_transforms (Sequence[list | None], optional): One list of
            photometric configs per view (``None``: leave that view alone),
            e.g. ``[target_view_aug, other_view_aug]``. ``None`` makes this
            exactly ``SelfSupDataPreprocessor``.
        geometric_target_view (bool): In training, output the target view
            before photometric augmentation (crop, resize and flip only) as
            ``inputs[2]``: view 0 before ``view_transforms``, or, when the
            pipeline augments per image, the third view that
            ``M3IViews(geometric_target_view=True)`` adds. Defaults to
            False.
        **kwargs: ``SelfSupDataPreprocessor`` arguments (``mean``, ``std``,
            ``to_rgb``, ...).

    Raises:
        ValueError: A batch has a different number of views than
            ``view_transforms``, or a config has no batched version; with
            ``geometric_target_view``, a batch of neither 2 views with
            ``view_transforms`` nor 3 views.
    """

    def __init__(self,
                 view_transforms: Optional[Sequence[Optional[list]]] = None,
                 geometric_target_view: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if view_transforms is not None and (
                isinstance(view_transforms, dict)
                or not isinstance(view_transforms, Sequence)):
            raise TypeError('view_transforms must be a list with one list of '
                            'configs (or None) per view, got '
                            f'{type(view_transforms).__name__}')
        self.view_augments = None if view_transforms is None else \
            nn.ModuleList(
                nn.Identity() if t is None else build_batch_augment(
                    t, bgr_weights=self._channel_conversion)
                for t in view_transforms)
        self.geometric_target_view = bool(geometric_target_view)
        # Set by M3I to its text target's tokenizer.
        self.caption_tokenizer: Optional[Tokenizer] = None

    def _check_geometric_batch(self, count: int) -> None:
        """Raise unless a batch of ``count`` views can give the
        geometry-only target view: 3 views (the pipeline's third is it), or
        2 that this preprocessor augments (it keeps view 0 before)."""
        if count == 3 or (count == 2 and self.view_augments is not None):
            return
        if count == 2:
            raise ValueError(
                'geometric_target_view without view_transforms needs the '
                'geometry-only target view from the data pipeline (a batch '
                'of 3 views: M3IViews(geometric_target_view=True)); got 2 '
                'views, whose photometric augmentation is unknown here')
        raise ValueError('geometric_target_view needs a batch of 2 views '
                         '(target, other) or 3 (plus the geometry-only '
                         f'target view), got {count}')

    # Host work (numpy fields, tokenizers, counts) that dynamo cannot trace:
    # under mmengine's compile=True (the whole train_step) it runs eagerly.
    @torch.compiler.disable
    def forward(self, data: dict, training: bool = False) -> dict:
        """Cast, convert and normalise as the parent; augment if training.

        Args:
            data (dict): ``inputs`` (list of ``(N, 3, H, W)`` uint8 views)
                and ``data_samples`` from ``default_collate``.
            training (bool): Augment only when true.

        Returns:
            dict: ``inputs`` (list of float ``(N, 3, H, W)``, plus the
            geometry-only target view with ``geometric_target_view``) and
            ``data_samples``; in training each sample also gets the uniform
            fields ``M3I.loss`` reads (``num_masked``, ``has_label``,
            ``label_index``, ``has_caption``, ``caption_tokens``:
            :mod:`~m3i_mm.models.utils.sample_fields`), so the loss reads no
            data-dependent Python value (one ``torch.compile`` graph).

        Raises:
            ValueError: A label is not an integer (naming the sample).
        """
        if not training:
            return super().forward(data, training)
        samples = data.get('data_samples') or []
        # Read on the host before the masks move to the device.
        count = num_masked(samples, required=False)
        self._move_shared_fields(samples)
        if self.view_augments is None and not self.geometric_target_view:
            out = super().forward(data, training)
        else:
            out = self._augment(data)
        if out['data_samples']:
            inputs = out['inputs']
            device = (inputs[0] if isinstance(inputs, list) else inputs).device
            prepare_training_samples(out['data_samples'], device, count,
                                     self.caption_tokenizer)
        return out

    def _move_shared_fields(self, data_samples: list) -> None:
        """Move each tensor or array field that every sample has, in one
        shape and dtype (``mask``, ``view_boxes``, ``view_flips``, ...), to
        the device as one tensor: one copy per field instead of one per
        sample (3 x 128 small host-to-device copies a step for 128 samples,
        ``PackInputs``' arrays copied in the loss). The samples get rows of
        it, which ``cast_data`` then leaves in place."""
        if not data_samples:
            return
        for name in data_samples[0].keys():
            values = [s.get(name) for s in data_samples]
            first = values[0]
            if isinstance(first, np.ndarray):
                if first.dtype.kind not in 'biufc':  # no torch dtype
                    continue
            elif not isinstance(first, torch.Tensor):
                continue
            if any(type(v) is not type(first) or v.shape != first.shape
                   or v.dtype != first.dtype for v in values):
                continue
            batch = torch.stack(values) if isinstance(
                first, torch.Tensor) else torch.from_numpy(np.stack(values))
            batch = batch.to(self.device, non_blocking=self._non_blocking)
            for sample, row in zip(data_samples, batch):
                sample.set_field(row, name)

    def _augment(self, data: dict) -> dict:
        """Cast, convert, augment each view and normalise (training)."""
        inputs, data_samples = self.cast_data(
            [data['inputs'], data.get('data_samples')])
        count = len(inputs) if isinstance(inputs, list) else 1
        views_in = count
        if self.geometric_target_view:
            self._check_geometric_batch(count)
            views_in = 2
        if self.view_augments is None:
            augments = [nn.Identity()] * views_in
        elif views_in != len(self.view_augments):
            raise ValueError(
                f'M3IDataPreprocessor has view_transforms for '
                f'{len(self.view_augments)} views but the batch has '
                f'{views_in}')
        else:
            augments = list(self.view_augments)
        if self.geometric_target_view:
            if count == 2:  # the target view before its augmentation
                inputs = inputs + [inputs[0]]
            augments.append(nn.Identity())
        views = []
        for view, augment in zip(inputs, augments):
            if self._channel_conversion:
                view = view[:, [2, 1, 0], ...]
            with torch.autocast(view.device.type, enabled=False):
                view = augment(view.float() / 255.) * 255.
            if self._enable_normalize:
                view = (view - self.mean) / self.std
            views.append(view)
        return {'inputs': views, 'data_samples': data_samples}
