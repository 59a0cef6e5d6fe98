"""CPU cost per image of the M3I input pipeline against MAE's, in one run.

Prints, on real photos shipped by an installed package (scikit-learn's
sample JPEGs china.jpg and flower.jpg, 427x640):

- milliseconds per image on one core of: JPEG decoding alone, mmpretrain's
  MAE pipeline (RandomResizedCrop 224 + flip), the M3I pipeline with the
  photometric augmentation per image in the workers, and with it batched on
  the device (``configs/_base_/datasets/imagenet_m3i.py``), as ratios to MAE
  (goal: M3I <= 1.5x MAE);
- the cost per image of the batched augmentation on the device at hand
  (``M3IDataPreprocessor`` with and without it, batch ``--batch``);
- the data-loader cores one GPU needs at ``--images-per-second``.

Pipelines run in turns (interleaved rounds, medians), single-threaded, so
load from other processes affects them alike; compare ratios within a run.

Usage:
    python benchmarks/pipeline.py [--rounds 7] [--per-round 8] [--batch 64]
        [--images-per-second 400] [--device cpu|cuda]
"""
import argparse
import os.path as osp
import statistics
import time
from importlib import resources

import cv2
import numpy as np
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.registry import DefaultScope

import m3i_mm  # noqa: F401
from mmpretrain.registry import MODELS, TRANSFORMS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA_CFG = osp.join(ROOT, 'configs', '_base_', 'datasets', 'imagenet_m3i.py')
MAE_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, crop_ratio_range=(0.2, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackInputs'),
]


def sample_photos() -> list:
    """Paths of scikit-learn's two sample JPEGs."""
    folder = resources.files('sklearn.datasets') / 'images'
    return [str(folder / name) for name in ('china.jpg', 'flower.jpg')]


def build(pipeline: list) -> Compose:
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return Compose([TRANSFORMS.build(t) for t in pipeline])


def ms_per_image(pipelines: dict, photos: list, rounds: int,
                 per_round: int) -> dict:
    """Median milliseconds per image of each pipeline, run in turns."""
    times = {name: [] for name in pipelines}
    for round_idx in range(rounds + 1):  # round 0 warms up
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            for i in range(per_round):
                pipeline(dict(img_path=photos[i % len(photos)]))
            if round_idx:
                times[name].append(
                    (time.perf_counter() - start) * 1e3 / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def batched_ms_per_image(cfg: Config, batch: int, device: str,
                         rounds: int) -> float:
    """Device milliseconds per image of the batched view augmentation."""
    preprocessor = MODELS.build(
        dict(type='M3IDataPreprocessor', mean=[123.675, 116.28, 103.53],
             std=[58.395, 57.12, 57.375], to_rgb=True,
             view_transforms=cfg.view_transforms)).to(device)
    size = cfg.img_size
    views = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
             for _ in range(2)]
    data = dict(inputs=views, data_samples=None)
    times = {True: [], False: []}
    for round_idx in range(rounds + 1):
        for training in (True, False):
            if device == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
            preprocessor(data, training=training)
            if device == 'cuda':
                torch.cuda.synchronize()
            if round_idx:
                times[training].append(time.perf_counter() - start)
    extra = statistics.median(times[True]) - statistics.median(times[False])
    return extra * 1e3 / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--per-round', type=int, default=8)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--images-per-second', type=float, default=400.)
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    np.random.seed(0)
    torch.manual_seed(0)
    cfg = Config.fromfile(DATA_CFG)
    photos = sample_photos()
    t = ms_per_image(
        dict(decode=build([dict(type='LoadImageFromFile')]),
             mae=build(MAE_PIPELINE),
             per_image=build(cfg.per_image_pipeline),
             batched=build(cfg.train_pipeline)), photos, args.rounds,
        args.per_round)
    aug = batched_ms_per_image(cfg, args.batch, args.device, args.rounds)

    print(f'{len(photos)} photos 427x640 (scikit-learn), one core, median '
          f'of {args.rounds} rounds x {args.per_round} images')
    print(f'  JPEG decode alone                 {t["decode"]:7.2f} ms/image')
    print(f'  MAE (RandomResizedCrop + flip)    {t["mae"]:7.2f} ms/image')
    print(f'  M3I, augmentation per image       {t["per_image"]:7.2f} '
          f'ms/image  = {t["per_image"] / t["mae"]:5.2f} x MAE')
    print(f'  M3I, augmentation batched         {t["batched"]:7.2f} '
          f'ms/image  = {t["batched"] / t["mae"]:5.2f} x MAE (goal <= 1.5)')
    threads = torch.get_num_threads() if args.device == 'cpu' else 'GPU'
    print(f'batched augmentation on {args.device} ({threads} thread(s), '
          f'batch {args.batch}): {aug:7.3f} ms/image')
    print(f'data-loader cores per GPU at {args.images_per_second:g} '
          'images/s:')
    for name in ('mae', 'per_image', 'batched'):
        cores = args.images_per_second * t[name] / 1e3
        print(f'  {name:10s} {cores:6.1f}')


if __name__ == '__main__':
    main()
