"""Image target encoder f_φ: a fixed pre-trained encoder (no EMA)."""
import copy
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
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


def teacher_input(images: torch.Tensor,
                  source_mean: Optional[torch.Tensor] = None,
                  source_std: Optional[torch.Tensor] = None,
                  mean: Optional[torch.Tensor] = None,
                  std: Optional[torch.Tensor] = None,
                  size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """A batch normalised for the student, made a teacher's input.

    Un-normalises with the student's ``source_mean``/``source_std`` (back to
    the data preprocessor's pixel scale, 0-255 in mmpretrain), resizes to
    ``size`` (bicubic, antialiased when shrinking, as a CLIP-style teacher's
    own resize) and normalises with the teacher's ``mean``/``std``
    (FD, Wei et al. 2022, and MILAN feed CLIP its own preprocessing).

    Args:
        images (Tensor): (N, C, H, W), ``(x - source_mean) / source_std``.
        source_mean, source_std (Tensor, optional): (C, 1, 1), the
            student's normalisation; with ``mean``/``std`` (all four or
            none).
        mean, std (Tensor, optional): (C, 1, 1), the teacher's, on the same
            pixel scale.
        size (tuple, optional): Teacher input ``(h, w)``, of the views'
            aspect ratio; None keeps H, W.

    Returns:
        Tensor: (N, C, h, w), float32 unless nothing was asked (then
        ``images`` itself).

    Raises:
        ValueError: ``size`` has another aspect ratio than H, W; ``mean``
            has not C values.
    """
    if mean is None and size is None:
        return images
    x = images.float()
    if mean is not None and mean.numel() != x.shape[1]:
        raise ValueError(f'teacher mean/std have {mean.numel()} values for '
                         f'{x.shape[1]}-channel images')
    if mean is not None:
        x = x * source_std + source_mean
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        height, width = x.shape[-2:]
        if size[0] * width != size[1] * height:
            # The same token count at another aspect ratio would pair
            # targets with the wrong patches.
            raise ValueError(f'teacher size {tuple(size)} changes the aspect '
                             f'ratio of the {height}x{width} views')
        x = F.interpolate(x, size=tuple(size), mode='bicubic',
                          align_corners=False, antialias=True)
    if mean is not None:
        x = (x - mean) / std
    return x


def _channels(value: Optional[Sequence[float]], key: str
              ) -> Optional[torch.Tensor]:
    """(C, 1, 1) tensor of a per-channel config value (or None): finite
    numbers, positive for a ``*std``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) \
            or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in value):
        raise ValueError(f'{key} must be a list of per-channel numbers, got '
                         f'{value!r}')
    values = [float(v) for v in value]
    if not all(math.isfinite(v) for v in values) or \
            (key.endswith('std') and not all(v > 0 for v in values)):
        raise ValueError(f'{key} must be finite'
                         + (' and positive' if key.endswith('std') else '')
                         + f', got {value!r}')
    return torch.tensor(values).view(-1, 1, 1)


class TeacherPreprocessing(nn.Module):
    """A frozen encoder's own input (:func:`teacher_input`), configured.

    Holds the four per-channel normalisations as non-persistent buffers
    (configuration, not checkpoint state) and the input size.

    Args:
        owner (str): The target encoder's name, in errors.
        mean, std, source_mean, source_std (Sequence[float], optional): As
            in :func:`teacher_input`, one value per channel; all four or
            none.
        size (int | Sequence[int], optional): Input ``(h, w)``; None keeps
            the view's size.

    Raises:
        ValueError: Not all four normalisations (or none), of different
            lengths or not lists of numbers; ``size`` not positive.
    """

    def __init__(self, owner: str,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 source_mean: Optional[Sequence[float]] = None,
                 source_std: Optional[Sequence[float]] = None,
                 size: Optional[Union[int, Sequence[int]]] = None) -> None:
        super().__init__()
        norms = {k: _channels(v, f'image_target.{k}') for k, v in
                 dict(mean=mean, std=std, source_mean=source_mean,
                      source_std=source_std).items()}
        given = sorted(k for k, v in norms.items() if v is not None)
        if given and len(given) != 4:
            raise ValueError(f'{owner} needs mean, std, source_mean and '
                             f'source_std together, got only {given}')
        if given and len({v.numel() for v in norms.values()}) != 1:
            raise ValueError(f'{owner}: mean, std, source_mean and '
                             'source_std must have one value per channel, '
                             f'got {({k: len(v) for k, v in norms.items()})}')
        for key, value in norms.items():
            self.register_buffer(key, value, persistent=False)
        if size is not None:
            size = (size, size) if isinstance(size, int) else \
                tuple(size) if isinstance(size, Sequence) else (size, )
            if len(size) != 2 or any(
                    not isinstance(s, int) or isinstance(s, bool) or s < 1
                    for s in size):
                raise ValueError(f'{owner}: size must be a positive int or '
                                 f'(h, w), got {size!r}')
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) student-normalised -> the encoder's input."""
        return teacher_input(images, self.source_mean, self.source_std,
                             self.mean, self.std, self.size)


class FrozenTarget(BaseModule):
    """Base of the target encoders f_φ that are a fixed pre-trained network
    (a teacher, a tokenizer; paper Table 5, footnotes 1 and 2).

    The network is loaded once from ``checkpoint`` and never updated (no
    EMA, no gradients, always in eval mode). Its weights are read in
    :meth:`init_weights` (which mmengine's runner calls after building the
    model) or, if that never ran, before the first forward; a resumed run
    restores them from its own checkpoint (the persistent ``loaded`` flag).
    It gets its own input (:class:`TeacherPreprocessing`), optionally of the
    target view before photometric augmentation.

    A subclass names the network's attribute (``network_name``, also its
    state-dict name) and its role in errors (``role``).

    Args:
        network (nn.Module): The frozen network.
        checkpoint (str): Checkpoint file (any scheme mmengine's
            ``CheckpointLoader`` reads, all parsed as data by
            :mod:`m3i_mm.engine.checkpoint`).
        prefix (str): Name prefix of the network's weights in the file.
        mean, std (Sequence[float], optional): The network's normalisation
            (RGB, on the data preprocessor's 0-255 scale), e.g. CLIP's
            ``(0.48145466, 0.4578275, 0.40821073)`` / ``(0.26862954,
            0.26130258, 0.27577711)`` times 255, or BEiT's dVAE (DALL-E)
            ``[-31.875] * 3`` / ``[318.75] * 3`` (0-255 to [0.1, 0.9], as
            mmpretrain's ``TwoNormDataPreprocessor``). Needs ``source_mean``
            / ``source_std``. None: the student's normalisation.
        source_mean, source_std (Sequence[float], optional): The
            normalisation of the images it is given, i.e. the data
            preprocessor's ``mean``/``std``.
        size (int | Sequence[int], optional): The network's input size
            (``(h, w)``); its token grid must still match the student's for
            dense targets. None: the view's size.
        geometric_view (bool): Encode the target view before photometric
            augmentation (``inputs[2]``, see ``M3IDataPreprocessor(
            geometric_target_view=True)``), as a teacher is fed un-augmented
            images. Defaults to False.
        (See :func:`teacher_input` for the preprocessing.)

    Raises:
        ValueError: ``checkpoint`` is not a file name; the errors of
            :class:`TeacherPreprocessing`.
        At loading, naming the file: the errors of
        :func:`load_frozen_weights`.
    """

    network_name = 'encoder'
    role = 'teacher'

    def __init__(self,
                 network: nn.Module,
                 checkpoint: str,
                 prefix: str,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 source_mean: Optional[Sequence[float]] = None,
                 source_std: Optional[Sequence[float]] = None,
                 size: Optional[Union[int, Sequence[int]]] = None,
                 geometric_view: bool = False) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f"{owner} needs the {self.role}'s checkpoint "
                             f'file in image_target.checkpoint, got '
                             f'{checkpoint!r}')
        setattr(self, self.network_name, network.requires_grad_(False))
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.preprocess = TeacherPreprocessing(
            owner, mean, std, source_mean, source_std, size)
        self.geometric_view = bool(geometric_view)
        # Persistent: a resumed model's network comes from its checkpoint.
        self.register_buffer('loaded', torch.zeros((), dtype=torch.bool))

    @property
    def network(self) -> nn.Module:
        return getattr(self, self.network_name)

    def init_weights(self) -> None:
        """Load the network's weights from ``checkpoint``."""
        load_frozen_weights(self.network, self.checkpoint, self.prefix,
                            self.role)
        self.loaded.fill_(True)
        self._is_init = True

    def update(self, backbone: nn.Module) -> None:
        """Nothing to update: the network is fixed."""

    def train(self, mode: bool = True) -> 'FrozenTarget':
        """The network stays in eval mode (no dropout or drop path)."""
        super().train(mode)
        self.network.eval()
        return self

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) student-normalised views -> the network's input
        (its weights loaded first if they were not)."""
        if not bool(self.loaded):
            self.init_weights()
        return self.preprocess(images)


@MODELS.register_module()
class FrozenImageTarget(FrozenTarget):
    """z_y from a pre-trained image encoder that stays fixed.

    The target encoders of FD (dense distillation), MILAN and the BEiT v2
    tokenizer's teacher (paper Table 5, footnotes 1 and 2): any checkpoint
    of an image backbone (see :class:`FrozenTarget` for loading, freezing
    and the teacher's input).

    Args:
        checkpoint (str): The teacher's checkpoint file.
        backbone (nn.Module): The online backbone; its architecture (a deep
            copy) is the teacher's unless ``encoder`` is given.
        encoder (dict, optional): Teacher architecture config, e.g. a
            larger ``VisionTransformer``; it must output a feature map
            whose token grid matches the student's.
        prefix (str): Name prefix of the teacher's weights in the file.
            Defaults to ``'backbone.'``.
        output (str): ``'dense'`` (N, L, C) or ``'global'`` (N, C) targets.
        **kwargs: ``mean``, ``std``, ``source_mean``, ``source_std``,
            ``size``, ``geometric_view`` of :class:`FrozenTarget`.

    Raises:
        ValueError: Those of :class:`FrozenTarget`; ``output`` unknown.
    """

    def __init__(self,
                 checkpoint: str,
                 backbone: nn.Module,
                 encoder: Optional[dict] = None,
                 prefix: str = 'backbone.',
                 output: str = 'dense',
                 **kwargs) -> None:
        network = MODELS.build(encoder) if encoder is not None \
            else copy.deepcopy(backbone)
        super().__init__(network, checkpoint, prefix, **kwargs)
        self.output = check_target_output(output)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) student-normalised views -> (N, L, C) tokens, or
        (N, C) for ``'global'``, of the teacher's input."""
        return target_representation(
            backbone_tokens(self.encoder, self.network_input(images)),
            self.output)
