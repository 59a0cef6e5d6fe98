"""Every Table 2 / Table 5 instance pre-trained on the demo digits, probed.

Each instance config (``configs/pretrain/table5/*.py``, plus M3I, M3I w/o
mix and both with a fixed λ = 1, ``loss_balancer=None``) is adapted to the
demo: the backbone, decoder and heads of
``configs/pretrain/m3i_vit-tiny_demo.py`` (a 4-layer 64-wide ViT on 32x32
views, 4x4 patches), its data pipeline and optimiser, and a common budget
of ``--iters`` iterations (the demo's warm-up and cosine schedule cut to
it). Every run pre-trains on the training images
of digits 0-4 only (labels of 0-4 for the instances with a category target);
the frozen backbone (mean of the patch tokens) is then probed

* transfer: train on the training digits 5-9, test on the validation 5-9;
* in-domain: train on the training digits 0-4, test on the validation 0-4;

with a standardised logistic regression trained to convergence (C by
5-fold CV) and DINO's weighted 20-NN (:mod:`m3i_mm.evaluation.probe`), and
the per-dimension std and effective rank of the transfer test features.
The frozen-teacher instances use the M3I checkpoint of the same seed as
f_φ (fed the geometry-only target view with the demo's normalisation and
size, as that teacher was trained). The CLIP instances are left out: the
digits have no captions worth a text encoder (they run in
tests/test_framework_instances.py).

Prints one table (mean ± half the range over ``--seeds``, i.e. the
population std for two seeds), writes it as ``results.json`` and a PNG bar
chart under ``--work-dir``. ``--combine`` makes that table from the
``results.json`` of separate runs of the same settings (e.g. groups of
instances run on several machines); an instance in two of them (random
init, the M3I teacher; a run is deterministic) must agree.

Demo-scale choices (see README, "The instances compared on the demo"):
``--iters`` 400 at batch 32 and the momentum encoders' EMA schedule started
at ``--momentum`` 0.02 (coefficient 0.98 -> 1, cosine). The paper's 0.005
keeps exp(-0.005 * T / 2) of the random initialisation in f_φ after T
steps: nothing after its ~500k steps, but 37 % after 400, so every
momentum-target instance would predict a mostly random network; 0.02 keeps
exp(-4), 2 %.

Budget: 23 instances x 2 seeds = 46 pre-training runs, about 0.2 s a step
for M3I (two images, both image targets) at batch 32 on 2 cores plus about
10 s of start-up and probes a run: about 50 minutes on 2 idle cores.

Usage (the full run; or groups of --instances, then --combine):
    python benchmarks/framework_demo.py --seeds 2
    python benchmarks/framework_demo.py --combine A/results.json \
        B/results.json --work-dir work_dirs/framework_demo
"""
import argparse
import copy
import glob
import json
import math
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import m3i_mm  # noqa: E402,F401
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402

from m3i_mm.evaluation.probe import (build_backbone,  # noqa: E402
                                     demo_class_indices, evaluate_backbone,
                                     load_demo_split)
from m3i_mm.utils import shorten_iter_schedule  # noqa: E402

PRETRAIN = osp.join(REPO, 'configs', 'pretrain')
DEMO_CFG = osp.join(PRETRAIN, 'm3i_vit-tiny_demo.py')
PRETRAIN_CLASSES = tuple(range(5))
TRANSFER_CLASSES = tuple(range(5, 10))
RANDOM = 'random init'
TERM_WINDOW = 20  # iterations averaged for the final training terms
METRICS = ('transfer linear', 'transfer k-NN', 'in-domain linear',
           'in-domain k-NN', 'feat std', 'eff rank')


def instances() -> Dict[str, dict]:
    """Name -> ``dict(config=path, overrides=model overrides)``; M3I first
    (the frozen teachers read its checkpoint)."""
    found = {
        'M3I': dict(config=DEMO_CFG, overrides={}),
        'M3I fixed λ': dict(config=DEMO_CFG,
                            overrides=dict(loss_balancer=None)),
        'w/o mix': dict(config=osp.join(PRETRAIN, 'm3i_vitb_wo-mix.py'),
                        overrides={}),
        'w/o mix fixed λ': dict(
            config=osp.join(PRETRAIN, 'm3i_vitb_wo-mix.py'),
            overrides=dict(loss_balancer=None)),
    }
    for path in sorted(glob.glob(osp.join(PRETRAIN, 'table5', '*.py'))):
        name = osp.basename(path)[:-3].replace('_vitb', '')
        # mim-token: its tokenizer checkpoint (BEiT v2's VQ-KD) is not part
        # of the demo, and a random tokenizer's ids would say nothing.
        if not name.startswith('clip') and name != 'mim-token':
            found[name] = dict(config=path, overrides={})
    return found


def demo_model_cfg(model: dict, demo: dict,
                   teacher: Optional[str] = None,
                   momentum: Optional[float] = None) -> dict:
    """An instance's model with the demo's sizes; its parts' types, modes,
    targets and posteriors are kept.

    A ``geometric_target_view`` preprocessor stays one (with the demo's
    normalisation; the demo pipeline then adds the geometry-only view, see
    :func:`run_config`). A frozen teacher's own preprocessing (CLIP's in
    the configs) becomes the demo's normalisation and image size: its
    teacher is the demo's M3I.

    Args:
        model (dict): The instance config's ``model``.
        demo (dict): ``m3i_vit-tiny_demo.py``'s ``model``.
        teacher (str, optional): Checkpoint of a ``FrozenImageTarget``.
        momentum (float, optional): Start of a ``MomentumImageTarget``'s
            cosine schedule (``1 - m`` is the EMA coefficient); ``None``
            keeps the config's.

    Returns:
        dict: The adapted model config.

    Raises:
        ValueError: For a text target (not on the demo digits) or a frozen
            target without ``teacher``.
    """
    cfg = copy.deepcopy(model)
    if cfg.get('text_target'):
        raise ValueError('text targets are not part of the digits demo')
    dims = demo['backbone']['arch']['embed_dims']
    patch = demo['backbone']['patch_size']
    geometric = (cfg.get('data_preprocessor') or {}).get(
        'geometric_target_view', False)
    cfg['data_preprocessor'] = copy.deepcopy(demo['data_preprocessor'])
    if geometric:  # the demo's views come augmented from M3IViews
        cfg['data_preprocessor'].update(type='M3IDataPreprocessor',
                                        geometric_target_view=True)
    cfg['backbone'].update({k: copy.deepcopy(demo['backbone'][k]) for k in
                            ('arch', 'img_size', 'patch_size',
                             'drop_path_rate')})
    cfg['mixer']['patch_size'] = patch
    target = cfg.get('image_target') or {}
    if target.get('type') == 'PixelTarget':
        target['patch_size'] = patch
    if target.get('average_top_k'):  # data2vec's 6 of 12: the top half
        target['average_top_k'] = max(1, demo['backbone']['arch'][
            'num_layers'] // 2)
    if target.get('type') == 'MomentumImageTarget' and momentum is not None:
        target['momentum'] = momentum
    if target.get('type') == 'FrozenImageTarget':
        if teacher is None:
            raise ValueError('a FrozenImageTarget needs a teacher checkpoint')
        target['checkpoint'] = teacher
        if target.get('mean') is not None:  # the teacher is the demo's M3I
            norm = demo['data_preprocessor']
            target.update(mean=norm['mean'], std=norm['std'],
                          source_mean=norm['mean'], source_std=norm['std'])
        if target.get('size') is not None:
            target['size'] = demo['backbone']['img_size']
    decoder = cfg.get('image_decoder')
    if decoder and decoder['type'] == 'ImageTargetDecoder':
        decoder.update({k: demo['image_decoder'][k] for k in
                        ('in_channels', 'embed_dims', 'depth', 'num_heads')})
        decoder['out_channels'] = (patch**2 * 3 if target.get('type') ==
                                   'PixelTarget' else dims)
    elif decoder and decoder['type'] == 'AttentionPoolingHead':
        decoder.update({k: demo['category_head'][k] for k in
                        ('in_channels', 'out_channels', 'num_heads')})
    for part in ('category_head', 'category_embedding'):
        if cfg.get(part):
            cfg[part] = copy.deepcopy(demo[part])
    return cfg


def run_config(name: str, spec: dict, seed: int, args,
               teacher: Optional[str]) -> Config:
    """The runner config of one instance and seed."""
    demo = Config.fromfile(DEMO_CFG)
    model = Config.fromfile(spec['config']).model.to_dict()
    model.update(spec['overrides'])
    cfg = copy.deepcopy(demo)
    cfg.model = demo_model_cfg(model, demo.model.to_dict(), teacher,
                               args.momentum)
    if args.model_options:
        cfg.merge_from_dict({f'model.{k}': v
                             for k, v in args.model_options.items()})
    safe = name.replace(' ', '_').replace('/', '').replace('λ', 'lambda')
    cfg.work_dir = osp.join(args.work_dir, f'{safe}_seed{seed}')
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.log_level = 'WARNING'
    cfg.train_dataloader.update(batch_size=args.batch_size,
                                num_workers=args.workers,
                                persistent_workers=args.workers > 0)
    if cfg.model.data_preprocessor.get('geometric_target_view'):
        views = [t for t in cfg.train_dataloader.dataset.pipeline
                 if t.type == 'M3IViews']
        views[0].geometric_target_view = True
    dataset = cfg.train_dataloader.dataset
    dataset.data_root = args.data_root
    dataset.indices = demo_class_indices(args.data_root, 'train',
                                         PRETRAIN_CLASSES)
    cfg.monitor_dataloader.dataset.data_root = args.data_root
    shorten_iter_schedule(cfg, args.iters)
    cfg.default_hooks.logger.interval = max(args.iters, 1)
    return cfg


def pretrain(cfg: Config) -> Tuple[str, Dict[str, float]]:
    """Train one instance.

    Args:
        cfg (Config): Its runner config (:func:`run_config`).

    Returns:
        tuple[str, dict]: The last checkpoint, and the training terms
        (``loss_*``, ``lambda_sp``) averaged over the last
        :data:`TERM_WINDOW` iterations, plus ``ce_cls`` = ``loss_cls /
        lambda_sp`` of those averages (the category cross-entropy before λ,
        nats).
    """
    from mmengine.registry import RUNNERS
    runner = RUNNERS.build(cfg)  # the config's runner_type: M3IRunner
    runner.train()
    terms = {}
    for key, buffer in runner.message_hub.log_scalars.items():
        name = key.split('/', 1)[-1]
        if key.startswith('train/') and name.startswith(('loss_',
                                                         'lambda_')):
            terms[name] = float(buffer.mean(TERM_WINDOW))
    if 'loss_cls' in terms:
        terms['ce_cls'] = terms['loss_cls'] / terms.get('lambda_sp', 1.0)
    return (osp.join(cfg.work_dir, f'iter_{cfg.train_cfg.max_iters}.pth'),
            terms)


def probe_splits(data_root: str, limit: Optional[int]) -> dict:
    """(train, test) image/label pairs of the two probe tasks; ``limit``
    keeps the first images of each (tests)."""
    def split(name, classes):
        images, labels = load_demo_split(data_root, name, classes)
        return images[:limit], labels[:limit]
    return dict(
        transfer=(split('train', TRANSFER_CLASSES),
                  split('val', TRANSFER_CLASSES)),
        in_domain=(split('train', PRETRAIN_CLASSES),
                   split('val', PRETRAIN_CLASSES)))


def probe(backbone, splits: dict, folds: int) -> Dict[str, float]:
    transfer = evaluate_backbone(backbone, *splits['transfer'], folds=folds)
    domain = evaluate_backbone(backbone, *splits['in_domain'], folds=folds)
    return {'transfer linear': transfer['linear'],
            'transfer k-NN': transfer['knn'],
            'in-domain linear': domain['linear'],
            'in-domain k-NN': domain['knn'],
            'feat std': transfer['std'], 'eff rank': transfer['erank']}


def summarise(runs: Dict[str, List[dict]]) -> Dict[str, dict]:
    """Per instance and metric: mean and half the range over seeds."""
    table = {}
    for name, results in runs.items():
        table[name] = {}
        for metric in METRICS + ('seconds', ):
            values = np.array([r[metric] for r in results])
            table[name][metric] = dict(
                mean=float(values.mean()),
                spread=float((values.max() - values.min()) / 2))
        terms = [r['terms'] for r in results if 'terms' in r]
        table[name]['terms'] = {
            k: float(np.mean([t[k] for t in terms])) for k in
            sorted(set().union(*terms)) if all(k in t for t in terms)}
    return table


def format_table(table: Dict[str, dict]) -> str:
    header = f'{"instance":34s}' + ''.join(f'{m:>17s}' for m in METRICS) \
        + f'{"s/run":>7s}'
    lines = [header, '-' * len(header)]
    for name, row in table.items():
        cells = ''.join(f'{row[m]["mean"]:10.2f} ±{row[m]["spread"]:5.2f}'
                        for m in METRICS)
        lines.append(f'{name:34s}{cells}{row["seconds"]["mean"]:7.0f}')
    keys = sorted(set().union(*(row['terms'] for row in table.values())))
    if keys:
        lines += ['', f'training terms at the end (mean of the last '
                  f'{TERM_WINDOW} iterations and of the seeds; ce_cls = '
                  'loss_cls / λ of those means, nats, summed over the two '
                  'images of a mixed input)',
                  f'{"instance":34s}' + ''.join(f'{k:>17s}' for k in keys)]
        for name, row in table.items():
            if row['terms']:
                lines.append(f'{name:34s}' + ''.join(
                    f'{row["terms"][k]:17.3f}' if k in row['terms'] else
                    f'{"-":>17s}' for k in keys))
    return '\n'.join(lines)


def plot(table: Dict[str, dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(table)
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(names) * 0.6), 8),
                             sharex=True)
    for ax, split in zip(axes, ('transfer', 'in-domain')):
        for offset, kind in ((-0.2, 'linear'), (0.2, 'k-NN')):
            metric = f'{split} {kind}'
            ax.bar(x + offset, [table[n][metric]['mean'] for n in names],
                   0.4, yerr=[table[n][metric]['spread'] for n in names],
                   capsize=2, label=kind)
        ax.set_ylabel(f'{split} top-1 (%)')
        low = min(table[n][f'{split} {k}']['mean'] for n in names
                  for k in ('linear', 'k-NN'))
        ax.set_ylim(max(0, 10 * (low // 10) - 10), 100)
        if RANDOM in table:  # random-init levels
            for color, kind in (('C0', 'linear'), ('C1', 'k-NN')):
                ax.axhline(table[RANDOM][f'{split} {kind}']['mean'],
                           color=color, lw=0.8, ls='--')
        ax.legend(loc='lower left', bbox_to_anchor=(1.0, 0.0))
    axes[-1].set_xticks(x, names, rotation=60, ha='right')
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Settings that make two runs' numbers comparable.
SAME_SETTINGS = ('iters', 'momentum', 'seeds', 'model_options', 'batch_size',
                 'probe_limit', 'probe_folds', 'data_root')


def _load_results(path: str) -> dict:
    """A ``results.json`` of :func:`main`, checked: ``args`` with ``seeds``
    and, per instance, that many results with every metric.

    Raises:
        ValueError: Not such a file; the path and the key named.
    """
    try:
        with open(path) as f:
            loaded = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path}: not a readable results.json ({err})') \
            from err
    if not isinstance(loaded, dict) or \
            not isinstance(loaded.get('args'), dict) or \
            not isinstance(loaded.get('runs'), dict):
        raise ValueError(f'{path}: a results.json has "args" and "runs" '
                         'objects')
    seeds = loaded['args'].get('seeds')
    for name, results in loaded['runs'].items():
        if not isinstance(results, list) or len(results) != seeds:
            raise ValueError(f'{path}: {name!r} has not the {seeds} results '
                             'of args.seeds')
        for seed, result in enumerate(results):
            missing = [m for m in METRICS if not isinstance(
                result.get(m) if isinstance(result, dict) else None,
                (int, float))]
            if missing:
                raise ValueError(f'{path}: {name!r} seed {seed} lacks '
                                 f'{missing}')
    return loaded


def combine_runs(paths: Sequence[str]) -> Tuple[Dict[str, List[dict]],
                                                 dict]:
    """The per-seed results of separate runs (their ``results.json``) as
    one, e.g. of instances run on several machines.

    Returns:
        tuple: ``runs`` (instance -> per-seed results; random init first,
        then the order of :func:`instances`) and the first file's ``args``.

    Raises:
        ValueError: A file is no ``results.json`` with ``args.seeds``
            results of every metric per instance; the files differ in a
            setting of ``SAME_SETTINGS``, or an instance run in two files
            (the auto-added M3I teacher, random init) has different results
            there; the files and the key named.
    """
    runs: Dict[str, List[dict]] = {}
    source: Dict[str, str] = {}
    first_args: Optional[dict] = None
    for path in paths:
        loaded = _load_results(path)
        if first_args is None:
            first_args = loaded['args']
        for key in SAME_SETTINGS:
            if loaded['args'].get(key) != first_args.get(key):
                raise ValueError(
                    f'{path}: {key}={loaded["args"].get(key)!r} but '
                    f'{paths[0]} has {first_args.get(key)!r}; only runs of '
                    'the same settings combine')
        for name, results in loaded['runs'].items():
            if name not in runs:
                runs[name], source[name] = results, path
                continue
            for seed, (a, b) in enumerate(zip(runs[name], results)):
                differ = [m for m in METRICS
                          if not math.isclose(a[m], b[m], rel_tol=1e-9)]
                if differ:
                    raise ValueError(
                        f'{name!r} is in {source[name]} and {path} with '
                        f'different results (seed {seed}: {differ}); '
                        'combine runs of the same code')
    order = [RANDOM] + list(instances())
    return dict(sorted(runs.items(), key=lambda item: order.index(item[0])
                       if item[0] in order else len(order))), first_args


def report(runs: Dict[str, List[dict]], args: dict, work_dir: str
           ) -> Dict[str, dict]:
    """Print the table of ``runs``, write ``results.json`` and the chart
    into ``work_dir``; returns the table."""
    table = summarise(runs)
    os.makedirs(work_dir, exist_ok=True)
    title = (f'demo digits: pre-train on 0-4 ({args["iters"]} it), probe '
             f'frozen features; mean ± half-range over {args["seeds"]} '
             'seeds; dashed: random init')
    print('\n' + title)
    print(format_table(table))
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(dict(args=args, table=table, runs=runs), f, indent=1)
    plot(table, osp.join(work_dir, 'framework_demo.png'), title)
    print(f'written: {osp.join(work_dir, "results.json")}, '
          f'{osp.join(work_dir, "framework_demo.png")}')
    return table


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=400,
                        help='pre-training iterations of every instance')
    parser.add_argument(
        '--momentum', type=float, default=0.02,
        help='start of the momentum target encoders\' EMA schedule, '
        '1 - coefficient (paper: 0.005 over ~500k iterations)')
    parser.add_argument('--seeds', type=int, default=2)
    parser.add_argument('--instances', nargs='*', default=None,
                        help='names to run (default: all); see --list')
    parser.add_argument('--list', action='store_true')
    parser.add_argument(
        '--model-options', nargs='+', action=DictAction, default={},
        help='overrides of every run\'s model after its demo adaptation, '
        'e.g. image_posterior.decorrelation_weight=0 (mmengine DictAction '
        'syntax)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--probe-limit', type=int, default=None,
                        help='first N images of each probe split (tests)')
    parser.add_argument('--probe-folds', type=int, default=5)
    parser.add_argument('--work-dir', default='work_dirs/framework_demo')
    parser.add_argument('--data-root', default='data/demo_digits')
    parser.add_argument(
        '--combine', nargs='+', metavar='RESULTS_JSON', default=None,
        help='run nothing: one table and chart (in --work-dir) from the '
        'results.json of separate runs of the same settings')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    args = parse_args(argv)
    specs = instances()
    if args.list:
        print('\n'.join(specs))
        return {}
    if args.combine:
        runs, run_args = combine_runs(args.combine)
        run_args.update(instances=[n for n in runs if n != RANDOM],
                        work_dir=args.work_dir, combined=args.combine)
        return report(runs, run_args, args.work_dir)
    if args.instances:
        unknown = sorted(set(args.instances) - set(specs))
        if unknown:
            raise SystemExit(f'unknown instances {unknown}; '
                             f'known: {sorted(specs)}')
        specs = {n: s for n, s in specs.items() if n in args.instances}
    needs_teacher = any('frozen-teacher' in n for n in specs)
    if needs_teacher and 'M3I' not in specs:
        specs = dict(M3I=instances()['M3I'], **specs)
    splits = probe_splits(args.data_root, args.probe_limit)
    # Quiet init reports of the random-init backbone (the runners log at
    # WARNING too).
    MMLogger.get_instance('framework_demo', log_level='WARNING')
    demo_backbone = Config.fromfile(DEMO_CFG).model.backbone.to_dict()
    runs: Dict[str, List[dict]] = {RANDOM: []}
    for seed in range(args.seeds):
        start = time.time()
        torch.manual_seed(seed)
        runs[RANDOM].append(dict(probe(build_backbone(demo_backbone), splits,
                                       args.probe_folds),
                                 seconds=time.time() - start))
        teacher = None
        for name, spec in specs.items():
            start = time.time()
            cfg = run_config(name, spec, seed, args, teacher)
            checkpoint, terms = pretrain(cfg)
            if name == 'M3I':
                teacher = checkpoint
            result = probe(build_backbone(demo_backbone, checkpoint), splits,
                           args.probe_folds)
            result['seconds'] = time.time() - start
            result['terms'] = terms
            runs.setdefault(name, []).append(result)
            print(f'[seed {seed}] {name}: transfer linear / k-NN '
                  f'{result["transfer linear"]:.2f} / '
                  f'{result["transfer k-NN"]:.2f}, in-domain '
                  f'{result["in-domain linear"]:.2f} / '
                  f'{result["in-domain k-NN"]:.2f}, eff rank '
                  f'{result["eff rank"]:.1f}; final '
                  + ', '.join(f'{k} {v:.3f}' for k, v in terms.items())
                  + f' ({result["seconds"]:.0f} s)', flush=True)
    return report(runs, vars(args), args.work_dir)


if __name__ == '__main__':
    main()
