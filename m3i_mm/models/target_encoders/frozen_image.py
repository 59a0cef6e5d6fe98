"""Image target encoder f_φ: a fixed pre-trained encoder (no EMA)."""
import copy
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader

from m3i_mm.engine.checkpoint.parser import NotACheckpointError
from m3i_mm.registry import MODELS
from .momentum_image import (backbone_tokens, check_target_output,
                             target_representation)


def state_dict_under(checkpoint: dict, prefix: str, filename: str) -> dict:
    """The weights of ``checkpoint`` whose names start with ``prefix``, with
    the prefix removed.

    Args:
        checkpoint (dict): A loaded checkpoint (with or without a
            ``state_dict`` entry).
        prefix (str): e.g. ``'backbone.'`` (an M3I / mmpretrain checkpoint's
            online encoder), ``'image_target.ema.module.'`` (its momentum
            encoder) or ``''`` (a bare backbone state dict).
        filename (str): Named in errors.

    Returns:
        dict: name -> tensor.

    Raises:
        KeyError: No weight starts with ``prefix`` (the message lists the
            top-level names the file holds).
    """
    state = checkpoint.get('state_dict', checkpoint)
    weights = {
        k[len(prefix):]: v
        for k, v in state.items() if k.startswith(prefix)
    }
    if not weights:
        heads = sorted({k.split('.')[0] + '.' for k in state})
        raise KeyError(f'{filename}: no weights under prefix {prefix!r}; '
                       f'it holds {heads}')
    return weights


def load_frozen_weights(module: nn.Module, checkpoint: str, prefix: str,
                        role: str) -> None:
    """Load all of ``module``'s weights from the file ``checkpoint``.

    The file is read through mmengine's ``CheckpointLoader``, so parsed as
    data by :mod:`m3i_mm.engine.checkpoint`, never unpickled.

    Args:
        module (nn.Module): The frozen encoder (a teacher, a tokenizer).
        checkpoint (str): The file (or URL) named by
            ``image_target.checkpoint``.
        prefix (str): Name prefix of the module's weights in the file.
        role (str): The module's name in errors, e.g. ``'teacher'``.

    Raises:
        FileNotFoundError: No such file (the config key named).
        UnsafeCheckpointError: The file would run code or corrupt memory
            (named by the parser).
        ValueError: The file is no checkpoint or no state dict, or its
            weights are missing, unexpected or mis-shaped for ``module``.
        KeyError: No weight under ``prefix``.
    """
    where = f'image_target.checkpoint={checkpoint!r}'
    try:
        ckpt = CheckpointLoader.load_checkpoint(checkpoint,
                                                map_location='cpu')
    except FileNotFoundError as err:
        raise FileNotFoundError(f'{where}: {err}') from err
    except NotACheckpointError as err:
        raise ValueError(f'{where}: {err}') from err
    if not isinstance(ckpt, dict):
        raise ValueError(f'{where}: not a state dict but '
                         f'{type(ckpt).__name__}')
    weights = state_dict_under(ckpt, prefix, checkpoint)
    try:
        result = module.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shapes differ
        raise ValueError(f'{where} (prefix {prefix!r}) does not fit the '
                         f'{role}: {err}') from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f'{where} (prefix {prefix!r}) does not fit the {role}: missing '
            f'{result.missing_keys[:5]}, unexpected '
            f'{result.unexpected_keys[:5]}')


@MODELS.register_module()
class FrozenImageTarget(BaseModule):
    """z_y from a pre-trained image encoder that stays fixed.

    The target encoders of FD (dense distillation), MILAN and the BEiT v2
    tokenizer's teacher (paper Table 5, footnotes 1 and 2): any checkpoint
    of an image backbone, loaded once and never updated (no EMA, no
    gradients, always in eval mode). The weights are read in
    :meth:`init_weights` (which mmengine's runner calls after building the
    model) or, if that never ran, before the first forward; a resumed run
    restores them from its own checkpoint.

    Args:
        checkpoint (str): Checkpoint file (any scheme mmengine's
            ``CheckpointLoader`` reads, all parsed as data by
            :mod:`m3i_mm.engine.checkpoint`).
        backbone (nn.Module): The online backbone; its architecture (a deep
            copy) is the teacher's unless ``encoder`` is given.
        encoder (dict, optional): Teacher architecture config, e.g. a
            larger ``VisionTransformer``; it must output a feature map
            whose token grid matches the student's.
        prefix (str): Name prefix of the teacher's weights in the file.
            Defaults to ``'backbone.'``.
        output (str): ``'dense'`` (N, L, C) or ``'global'`` (N, C) targets.

    Raises:
        ValueError: ``checkpoint`` is not a file name.
        At loading, naming the file: the errors of
        :func:`load_frozen_weights`.
    """

    def __init__(self,
                 checkpoint: str,
                 backbone: nn.Module,
                 encoder: Optional[dict] = None,
                 prefix: str = 'backbone.',
                 output: str = 'dense') -> None:
        super().__init__()
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f'FrozenImageTarget needs a checkpoint file, '
                             f'got {checkpoint!r}')
        self.encoder = MODELS.build(encoder) if encoder is not None \
            else copy.deepcopy(backbone)
        self.encoder.requires_grad_(False)
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.output = check_target_output(output)
        # Persistent: a resumed model's teacher comes from its checkpoint.
        self.register_buffer('loaded', torch.zeros((), dtype=torch.bool))

    def init_weights(self) -> None:
        """Load the teacher's weights from ``checkpoint``."""
        load_frozen_weights(self.encoder, self.checkpoint, self.prefix,
                            'teacher')
        self.loaded.fill_(True)
        self._is_init = True

    def update(self, backbone: nn.Module) -> None:
        """Nothing to update: the teacher is fixed."""

    def train(self, mode: bool = True) -> 'FrozenImageTarget':
        """The teacher stays in eval mode (no dropout or drop path)."""
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, C) tokens, or (N, C) for ``'global'``."""
        if not bool(self.loaded):
            self.init_weights()
        return target_representation(
            backbone_tokens(self.encoder, images), self.output)
