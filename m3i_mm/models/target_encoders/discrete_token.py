"""Discrete-token target encoder: a frozen tokenizer's codebook ids."""
from typing import Optional

import torch
import torch.nn as nn

from m3i_mm.registry import MODELS
from .frozen_image import FrozenTarget


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
class DiscreteTokenTarget(FrozenTarget):
    """z_y = codebook ids of the target view's patches from a frozen
    tokenizer: BEiT's dVAE or BEiT v2's VQ-KD (Table 5, footnote 2), the
    target of a :class:`CodebookBoltzmannPosterior`.

    The tokenizer is any registered model mapping (N, C, H, W) images to
    ids or codebook logits (:func:`token_ids`), e.g. mmpretrain's ``VQKD``
    (BEiT v2); it is loaded, frozen and fed as a teacher is
    (:class:`~m3i_mm.models.target_encoders.frozen_image.FrozenTarget`).

    Args:
        tokenizer (dict): Tokenizer config, e.g. ``dict(type='VQKD', ...)``.
        checkpoint (str): The tokenizer's checkpoint file.
        prefix (str): Name prefix of its weights in the file. Defaults to
            ``''`` (a bare tokenizer state dict, as mmpretrain's
            ``vqkd_encoder.pth``).
        backbone (nn.Module, optional): Ignored (the algorithm passes its
            backbone to every image target encoder).
        **kwargs: ``mean``, ``std``, ``source_mean``, ``source_std``,
            ``size``, ``geometric_view`` of ``FrozenTarget``; e.g. BEiT's
            dVAE takes ``mean=[-31.875] * 3, std=[318.75] * 3``.

    Raises:
        ValueError: Those of ``FrozenTarget``.
    """

    network_name = 'tokenizer'
    role = 'tokenizer'

    def __init__(self, tokenizer: dict, checkpoint: str, prefix: str = '',
                 backbone: Optional[nn.Module] = None, **kwargs) -> None:
        super().__init__(MODELS.build(tokenizer), checkpoint, prefix,
                         **kwargs)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) student-normalised views -> (N, L) int64 codebook
        ids of the tokenizer's input, raster order."""
        return token_ids(self.tokenizer(self.network_input(images)),
                         images.shape[0])
