"""Photometric view augmentation of a whole batch on the training device.

The photometric augmentations of M3I (Table 7: colour jitter, grayscale,
Gaussian blur, solarize) are configured with mmpretrain's per-image
transform configs; :func:`build_batch_augment` turns such a list into
kornia augmentations, which draw their random parameters per sample and run
batched on the device of their input (kornia 0.9, ``kornia.augmentation``).
"""
import math
from typing import List, Sequence

import torch
import torch.nn as nn


def _translate(cfg: dict, prob: float, bgr_weights: bool) -> nn.Module:
    import kornia.augmentation as K
    cfg = dict(cfg)
    kind = cfg.pop('type')
    if kind == 'RandomApply':
        inner = cfg.pop('transforms')
        if isinstance(inner, dict):
            inner = [inner]
        if len(inner) != 1 or cfg.keys() - {'prob'}:
            raise ValueError('batched RandomApply takes one transform and '
                             f'prob, got {inner!r} and {sorted(cfg)}')
        return _translate(inner[0], prob * cfg.get('prob', 0.5), bgr_weights)
    if kind == 'ColorJitter':
        unknown = cfg.keys() - {'brightness', 'contrast', 'saturation', 'hue'}
        if unknown:
            raise ValueError(f'batched ColorJitter: unsupported {unknown}')
        return K.ColorJitter(**cfg, p=prob)
    if kind == 'RandomGrayscale':
        if not cfg.get('keep_channels', False):
            raise ValueError(
                'batched RandomGrayscale needs keep_channels=True')
        weights = torch.tensor(cfg.get('channel_weights', (1., 1., 1.)))
        weights = weights / weights.sum()
        # mmcv's weights follow the loaded (BGR) order; views here are RGB.
        return K.RandomGrayscale(
            rgb_weights=weights.flip(0) if bgr_weights else weights,
            p=prob * cfg.get('prob', 0.1))
    if kind == 'GaussianBlur':
        if cfg.get('radius') is not None:
            low = high = float(cfg['radius'])
        elif cfg.get('magnitude_std', 0.) == 'inf':
            low, high = cfg['magnitude_range']
        else:
            raise ValueError("batched GaussianBlur needs a radius or "
                             "magnitude_std='inf' (a uniform sigma)")
        # PIL's GaussianBlur(radius) is a Gaussian of std radius with edge
        # pixels repeated; +-3 std of it is kept.
        return K.RandomGaussianBlur(
            kernel_size=2 * math.ceil(3 * high) + 1,
            sigma=(low, high),
            border_type='replicate',
            p=prob * cfg.get('prob', 0.5))
    if kind == 'Solarize':
        if cfg.get('thr') is None:
            raise ValueError('batched Solarize needs a fixed thr')
        thr = float(cfg['thr']) / 255.
        return K.RandomSolarize(
            thresholds=(thr, thr), additions=0., p=prob * cfg.get('prob', 0.5))
    raise ValueError(
        f'{kind!r} has no batched version; supported: RandomApply, '
        'ColorJitter, RandomGrayscale, GaussianBlur, Solarize')


def build_batch_augment(transforms: Sequence[dict],
                        bgr_weights: bool = True) -> nn.Sequential:
    """Batched kornia equivalent of a list of mmpretrain photometric configs.

    Args:
        transforms (Sequence[dict]): Configs as in an mmpretrain pipeline:
            ``RandomApply`` around one transform, ``ColorJitter``,
            ``RandomGrayscale`` (``keep_channels=True``), ``GaussianBlur``
            (fixed ``radius`` or uniform ``magnitude_range``), ``Solarize``
            (fixed ``thr`` on the 0-255 scale). Each keeps its probability.
        bgr_weights (bool): ``RandomGrayscale.channel_weights`` are given in
            BGR order (mmcv's loaded order) and the views are RGB.

    Returns:
        nn.Sequential: Maps ``(N, 3, H, W)`` RGB floats in ``[0, 1]`` to the
        augmented batch, each sample with its own random parameters.

    Raises:
        ValueError: A config has no batched version (the message names it).
    """
    if isinstance(transforms, dict) or not isinstance(transforms, Sequence):
        raise TypeError('transforms must be a list of configs, got '
                        f'{type(transforms).__name__}')
    modules: List[nn.Module] = [
        _translate(cfg, 1.0, bgr_weights) for cfg in transforms
    ]
    return nn.Sequential(*modules)
