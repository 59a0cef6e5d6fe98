"""Draw the M3I views, masks and mixed inputs of a config's training data.

For every sample one PNG with five panels: the original image with both crop
boxes (solid red: target view, dashed blue: other view), the target view, the
other view, the blockwise mask upsampled to the view (white = masked, i.e.
taken from the second image) and the mixed input, in which this sample is the
first image and a partner sample ``sigma(i)`` (a derangement over the drawn
samples) supplies its other view in the masked patches.

The training dataset (``train_dataloader.dataset``) is built from the config;
its pipeline must contain :class:`m3i_mm.datasets.transforms.M3IViews` and a
mask generator (``mask`` key). The pipeline is run step by step until the
packing transform, so any dataset and loading steps work.

Usage:
    python tools/visualize_views.py CONFIG [--num-samples N] [--out-dir DIR]
        [--seed S] [--channel-order bgr|rgb] [--cfg-options k=v ...]
"""
import argparse
import copy
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import m3i_mm  # noqa: F401  (compat fixes + registration before anything else)
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import set_random_seed  # noqa: E402
from mmpretrain.registry import DATASETS  # noqa: E402

from m3i_mm.models.utils.mixing import derangement, mix_images  # noqa: E402

# Figure layout: five panels in a PNG of PNG_SIZE (width, height) pixels.
PANELS = 5
DPI = 100
PNG_SIZE = (1500, 340)
FIG_SIZE = (PNG_SIZE[0] / DPI, PNG_SIZE[1] / DPI)
BOX_STYLES = (dict(edgecolor='red', linestyle='-'),
              dict(edgecolor='blue', linestyle='--'))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Visualise the M3I views of a config')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--num-samples', type=int, default=4, help='samples to draw')
    parser.add_argument(
        '--out-dir', default='work_dirs/view_vis', help='output folder')
    parser.add_argument(
        '--seed', type=int, default=0, help='seed of sampling and augments')
    parser.add_argument(
        '--channel-order',
        choices=['bgr', 'rgb'],
        default='bgr',
        help='channel order of the pipeline images (mmcv loads BGR)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. train_dataloader.dataset.'
        'data_root=data/x')
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f'--num-samples must be >= 1, got {args.num_samples}')
    return args


def _unwrap(dataset, idx: int):
    """Follow dataset wrappers (``.dataset``) down to one with a pipeline."""
    while not hasattr(dataset, 'pipeline') and hasattr(dataset, 'dataset'):
        dataset = dataset.dataset
        idx = idx % len(dataset)
    if not (hasattr(dataset, 'pipeline')
            and hasattr(dataset, 'get_data_info')):
        raise TypeError(f'cannot run the pipeline of {type(dataset).__name__}'
                        ': need a dataset with `pipeline` and '
                        '`get_data_info`')
    return dataset, idx


def collect_sample(dataset, idx: int) -> Dict:
    """Run a dataset's pipeline on one sample up to the packing step.

    Args:
        dataset: A dataset with ``pipeline`` and ``get_data_info`` (mmengine
            ``BaseDataset``) or a wrapper around one.
        idx (int): Sample index.

    Returns:
        dict: ``original`` (image entering the view transform), ``views``
        (list of two arrays), ``view_boxes``, ``view_flips``, ``mask``,
        ``index`` and ``img_path`` (or None).
    """
    base, base_idx = _unwrap(dataset, idx)
    results = copy.deepcopy(base.get_data_info(base_idx))
    original = None
    for t in base.pipeline.transforms:
        before = results.get('img')
        had_boxes = 'view_boxes' in results
        out = t(copy.copy(results))
        if out is None:
            raise RuntimeError(f'{t!r} dropped sample {idx}')
        if 'data_samples' in out:  # packing: stop before it
            break
        if 'view_boxes' in out and not had_boxes:
            # M3IViews decodes img_path itself when nothing loaded it.
            original = before if before is not None else mmcv.imread(
                results['img_path'])
        results = out
    if original is None:
        raise KeyError('no transform of the pipeline added "view_boxes"; '
                       'add M3IViews to the dataset pipeline')
    if 'mask' not in results:
        raise KeyError('no transform of the pipeline added "mask"; add '
                       'BlockwiseMaskGenerator to the dataset pipeline')
    views = results['img']
    if not (isinstance(views, (list, tuple)) and len(views) == 2):
        raise ValueError('expected img to be [target_view, other_view] after '
                         f'the view transform, got {type(views).__name__}')
    return dict(
        original=np.asarray(original),
        views=[np.asarray(v) for v in views],
        view_boxes=np.asarray(results['view_boxes'], dtype=np.float32),
        view_flips=np.asarray(results['view_flips'], dtype=bool),
        mask=np.asarray(results['mask']),
        index=idx,
        img_path=results.get('img_path'))


def _chw(img: np.ndarray) -> torch.Tensor:
    """(H, W[, C]) array to a float (C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(
        np.atleast_3d(img))).permute(2, 0, 1).float()


def mix_samples(samples: List[Dict],
                seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mix every sample's target view with a partner's other view.

    Uses :func:`derangement` and :func:`mix_images` of
    ``m3i_mm.models.utils.mixing`` on the views as float tensors.

    Args:
        samples (list[dict]): Outputs of :func:`collect_sample`.
        seed (int): Seed of the partner permutation.

    Returns:
        tuple: Mixed inputs ``(N, C, H, W)`` (float, view value range) and the
        permutation ``sigma`` ``(N,)``.
    """
    first = torch.stack([_chw(s['views'][0]) for s in samples])
    second = torch.stack([_chw(s['views'][1]) for s in samples])
    mask = torch.stack(
        [torch.from_numpy(s['mask'].astype(np.float32)) for s in samples])
    patch_h = first.shape[2] // mask.shape[1]
    patch_w = first.shape[3] // mask.shape[2]
    if (patch_h != patch_w or patch_h * mask.shape[1] != first.shape[2]
            or patch_w * mask.shape[2] != first.shape[3]):
        raise ValueError(f'mask grid {tuple(mask.shape[1:])} does not tile '
                         f'views of {tuple(first.shape[2:])} with square '
                         'patches')
    sigma = derangement(
        len(samples), generator=torch.Generator().manual_seed(seed))
    return mix_images(first, second, mask, sigma, patch_h), sigma


def _display(img: np.ndarray, channel_order: str) -> np.ndarray:
    """Image as displayable uint8 RGB or gray."""
    img = np.clip(np.asarray(img, dtype=np.float32), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and channel_order == 'bgr':
        img = img[..., ::-1]
    return img


def _show(ax, img: np.ndarray, title: str) -> None:
    kwargs = dict(cmap='gray', vmin=0, vmax=255) if img.ndim == 2 else {}
    ax.imshow(img, interpolation='nearest', **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_sample(sample: Dict,
                mixed: np.ndarray,
                partner_index: int,
                channel_order: str = 'bgr') -> plt.Figure:
    """Draw one sample's panels.

    Args:
        sample (dict): Output of :func:`collect_sample`.
        mixed (np.ndarray): Its mixed input, ``(H, W[, C])``.
        partner_index (int): Dataset index of the second image of the mix.
        channel_order (str): ``'bgr'`` or ``'rgb'``.

    Returns:
        Figure: ``FIG_SIZE`` inches; save at ``DPI``.
    """
    fig, axes = plt.subplots(1, PANELS, figsize=FIG_SIZE, dpi=DPI)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.03, top=0.82, wspace=0.06)
    names = ('target view', 'other view')
    _show(axes[0], _display(sample['original'], channel_order),
          f"original {sample['original'].shape[1]}x"
          f"{sample['original'].shape[0]} (boxes: red target, blue other)")
    for k in range(2):
        x0, y0, x1, y1 = sample['view_boxes'][k].tolist()
        # Pixel i is drawn centred at i, so its left edge is at i - 0.5.
        axes[0].add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5),
                      x1 - x0,
                      y1 - y0,
                      fill=False,
                      linewidth=2,
                      **BOX_STYLES[k]))
        flip = ', flipped' if sample['view_flips'][k] else ''
        _show(axes[k + 1], _display(sample['views'][k], channel_order),
              f'{names[k]} {k} ({BOX_STYLES[k]["edgecolor"]}{flip})')

    view_h, view_w = sample['views'][0].shape[:2]
    mask = np.asarray(sample['mask']).astype(bool)
    grid_h, grid_w = mask.shape
    pixel_mask = np.kron(mask,
                         np.ones((view_h // grid_h, view_w // grid_w),
                                 dtype=bool))
    _show(axes[3],
          pixel_mask.astype(np.uint8) * 255,
          f'mask {grid_h}x{grid_w}: {int(mask.sum())} masked')
    _show(axes[4], _display(mixed, channel_order),
          f'mixed: #{sample["index"]} target + #{partner_index} other')
    # Patch grid on the mask and the mixed input.
    for ax in axes[3:]:
        for r in range(1, grid_h):
            ax.axhline(r * view_h / grid_h - 0.5, color='gray', lw=0.3)
        for c in range(1, grid_w):
            ax.axvline(c * view_w / grid_w - 0.5, color='gray', lw=0.3)
    path = sample.get('img_path')
    fig.suptitle(
        f'sample #{sample["index"]}' +
        (f'  ({osp.basename(path)})' if path else ''),
        fontsize=10)
    return fig


def visualize(cfg: Config,
              num_samples: int,
              out_dir: str,
              seed: int = 0,
              channel_order: str = 'bgr') -> List[str]:
    """Write one PNG per sample of ``cfg.train_dataloader.dataset``.

    Args:
        cfg (Config): Config with ``train_dataloader.dataset``.
        num_samples (int): Number of samples (at most the dataset size).
        out_dir (str): Output folder.
        seed (int): Seed of sample choice, augmentations and mixing.
        channel_order (str): ``'bgr'`` or ``'rgb'``.

    Returns:
        list[str]: Paths of the written PNGs.
    """
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    set_random_seed(seed)
    dataset = DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset))
    if len(dataset) == 0:
        raise ValueError('the training dataset is empty')
    indices = np.random.choice(
        len(dataset), min(num_samples, len(dataset)), replace=False)
    samples = [collect_sample(dataset, int(i)) for i in indices]
    mixed, sigma = mix_samples(samples, seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k, sample in enumerate(samples):
        partner = samples[int(sigma[k])]['index']
        fig = draw_sample(sample, mixed[k].permute(1, 2, 0).numpy(), partner,
                          channel_order)
        path = osp.join(out_dir, f'views_{k:03d}_idx{sample["index"]}.png')
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    paths = visualize(cfg, args.num_samples, args.out_dir, args.seed,
                      args.channel_order)
    print(f'wrote {len(paths)} images to {args.out_dir}')
    return paths


if __name__ == '__main__':
    main()
