"""Discrete-token target encoder: a frozen tokenizer's codebook ids."""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from m3i_mm.registry import MODELS
from .frozen_image import TeacherPreprocessing, load_frozen_weights


def token_ids(output: torch.Tensor, batch: int) -> torch.Tensor:
    """A tokenizer's output as (N, L) int64 codebook ids in raster order.

    Args:
        output (Tensor): Integer ids (N, L) or (N, h, w) (e.g. mmpretrain's
            ``VQKD``, nearest codebook entry), or float logits
            (N, K, h, w) over the codebook (e.g. a DALL-E encoder), whose
            argmax is taken.
        batch (int): N, to check the output.

    Raises:
        ValueError: Any other shape or dtype.
    """
    if output.is_floating_point() and output.dim() == 4:
        output = output.argmax(1)
    if output.is_floating_point() or output.dim() not in (2, 3) or \
            output.shape[0] != batch:
        raise ValueError(
            f'a tokenizer must give (N, L) or (N, h, w) integer ids or '
            f'(N, K, h, w) logits for N={batch} images, got '
            f'{tuple(output.shape)} {output.dtype}')
    return output.flatten(1).long()


@MODELS.register_module()
class DiscreteTokenTarget(nn.Module):
    """z_y = codebook ids of the target view's patches from a frozen
    tokenizer: BEiT's dVAE or BEiT v2's VQ-KD (Table 5, footnote 2), the
    target of a :class:`CodebookBoltzmannPosterior`.

    The tokenizer is any registered model mapping (N, C, H, W) images to
    ids or codebook logits (:func:`token_ids`), e.g. mmpretrain's ``VQKD``
    (BEiT v2). Its weights are read from ``checkpoint`` in
    :meth:`init_weights` (or before the first forward) through mmengine's
    ``CheckpointLoader`` (parsed as data by :mod:`m3i_mm.engine.checkpoint`)
    and never change (eval mode, no gradients); a resumed run restores
    them from its own checkpoint.

    Args:
        tokenizer (dict): Tokenizer config, e.g. ``dict(type='VQKD', ...)``.
        checkpoint (str): The tokenizer's checkpoint file.
        prefix (str): Name prefix of its weights in the file. Defaults to
            ``''`` (a bare tokenizer state dict, as mmpretrain's
            ``vqkd_encoder.pth``).
        backbone (nn.Module, optional): Ignored (the algorithm passes its
            backbone to every image target encoder).
        mean, std, source_mean, source_std, size: The tokenizer's own input,
            as :class:`~m3i_mm.models.target_encoders.frozen_image.
            FrozenImageTarget`'s; e.g. BEiT's dVAE (DALL-E) takes
            ``mean=[-31.875] * 3, std=[318.75] * 3`` (mmpretrain's
            ``TwoNormDataPreprocessor`` second normalisation, the logit-
            Laplace [0.1, 0.9] range). None: the student's input.
        geometric_view (bool): Tokenize the target view before photometric
            augmentation (``inputs[2]``). Defaults to False.

    Raises:
        ValueError: ``checkpoint`` is not a file name; the preprocessing
            errors of :class:`~m3i_mm.models.target_encoders.frozen_image.
            TeacherPreprocessing`.
        At loading, naming the file: the errors of
        :func:`~m3i_mm.models.target_encoders.frozen_image.load_frozen_weights`.
    """

    def __init__(self, tokenizer: dict, checkpoint: str, prefix: str = '',
                 backbone: Optional[nn.Module] = None,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 source_mean: Optional[Sequence[float]] = None,
                 source_std: Optional[Sequence[float]] = None,
                 size: Optional[Union[int, Sequence[int]]] = None,
                 geometric_view: bool = False) -> None:
        super().__init__()
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f'DiscreteTokenTarget needs a tokenizer file in '
                             f'image_target.checkpoint, got {checkpoint!r}')
        self.tokenizer = MODELS.build(tokenizer)
        self.tokenizer.requires_grad_(False)
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.preprocess = TeacherPreprocessing(
            'DiscreteTokenTarget', mean, std, source_mean, source_std, size)
        self.geometric_view = bool(geometric_view)
        self.register_buffer('loaded', torch.zeros((), dtype=torch.bool))

    def init_weights(self) -> None:
        """Load the tokenizer's weights from ``checkpoint``."""
        load_frozen_weights(self.tokenizer, self.checkpoint, self.prefix,
                            'tokenizer')
        self.loaded.fill_(True)

    def update(self, backbone: nn.Module) -> None:
        """Nothing to update: the tokenizer is fixed."""

    def train(self, mode: bool = True) -> 'DiscreteTokenTarget':
        """The tokenizer stays in eval mode."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) student-normalised views -> (N, L) int64 codebook
        ids of the tokenizer's input, raster order."""
        if not bool(self.loaded):
            self.init_weights()
        return token_ids(self.tokenizer(self.preprocess(images)),
                         images.shape[0])
