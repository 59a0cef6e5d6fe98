"""Live training monitors: held-out top-1 of the targets M3I already learns.

The paper's argument (Sec. 1): supervised and weakly-supervised targets are
free training monitors. Every ``interval`` iterations
:class:`M3IMonitorHook` scores a held-out split (ImageNet val, the demo's
val digits) with the model as it is, no fine-tuning:

* ``monitor/category_top1``: the category head against the category
  embeddings, i.e. the category posterior's prediction (Table 4, "ImageNet
  w/o fine-tuning");
* ``monitor/zero_shot_top1``: the text head against class-name prompts
  (configs with ``model.zero_shot``);
* ``monitor/knn_top1``: DINO's weighted k-NN on the mean of the frozen
  backbone's tokens, the even positions of the held-out subset voting for
  the odd ones (:func:`~m3i_mm.evaluation.probe.knn_accuracy`).

Top-1 is in percent; ties count as wrong
(:func:`~m3i_mm.evaluation.metrics.accuracy.tie_aware_topk_accuracy`).
"""
import random
import time
from contextlib import contextmanager
from functools import partial
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import FUNCTIONS
from torch.utils.data import DataLoader, Subset

from m3i_mm.datasets.non_empty import build_dataset
from m3i_mm.evaluation.metrics.accuracy import tie_aware_topk_accuracy
from m3i_mm.evaluation.probe import knn_accuracy
from m3i_mm.registry import HOOKS

CONFIG_KEY = 'monitor_dataloader'


def heldout_indices(length: int, num_samples: Optional[int]) -> List[int]:
    """``num_samples`` positions spread evenly over ``range(length)`` (all
    of them for ``None`` or ``num_samples >= length``).

    Raises:
        ValueError: Fewer than 2 samples (the k-NN needs a bank and a
            query).
    """
    count = length if num_samples is None else min(num_samples, length)
    if count < 2:
        raise ValueError(f'the monitors need at least 2 held-out samples, '
                         f'got {count} (dataset of {length}, num_samples='
                         f'{num_samples})')
    return [i * length // count for i in range(count)]


def monitor_accuracies(outputs: Dict[str, torch.Tensor],
                       labels: torch.Tensor,
                       knn_k: int = 20) -> Dict[str, float]:
    """Top-1 (percent) of the monitor outputs of a held-out set.

    Args:
        outputs (dict[str, Tensor]): :meth:`M3I.monitor_outputs` of the
            whole set: ``features`` (N, C) and optionally ``category`` and
            ``zero_shot`` (N, K) class scores.
        labels (Tensor): (N,) integer labels.
        knn_k (int): Neighbours of the k-NN (at most the bank's size).

    Returns:
        dict[str, float]: ``monitor/<name>_top1`` for ``category``,
        ``zero_shot`` (when given) and ``knn`` (bank: even positions,
        queries: odd ones).
    """
    results = {}
    for name in ('category', 'zero_shot'):
        if name in outputs:
            top1 = tie_aware_topk_accuracy(outputs[name], labels,
                                           thrs=(None, ))[0][0]
            results[f'monitor/{name}_top1'] = float(top1)
    feats = outputs['features']
    bank, queries = feats[0::2], feats[1::2]
    results['monitor/knn_top1'] = knn_accuracy(
        bank, labels[0::2], queries, labels[1::2], k=min(knn_k, len(bank)))
    return results


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Python's, NumPy's, torch's CPU and current CUDA device's random
    states are restored on exit: the training stream does not see what
    runs inside."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() \
        else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@HOOKS.register_module()
class M3IMonitorHook(Hook):
    """Held-out top-1 of the category head, zero-shot and k-NN while training.

    Every ``interval`` iterations, on rank 0 (the other ranks go on and meet
    it at the next collective), the model is put in eval mode, scores the
    held-out subset without gradients and goes back to each module's mode;
    the random states are restored (:func:`preserved_rng`) and the held-out
    loader draws from its own generator, so the training run is the same,
    bit for bit, with or without this hook. The numbers go to the
    visualizer (``scalars.json``, TensorBoard) at step ``iteration`` and to
    the log.

    Args:
        interval (int): Iterations between two evaluations.
        num_samples (int, optional): Held-out samples, spread evenly over the
            split (:func:`heldout_indices`); ``None``: all.
        knn_k (int): Neighbours of the k-NN. Defaults to 20 (DINO).
        category (bool): Score the category head. False where the held-out
            labels are not the head's categories (ImageNet-1k val for an
            ImageNet-22k head). Defaults to True.
        dataloader (dict, optional): The held-out loader (``batch_size``,
            ``num_workers``, ``dataset``, ``collate_fn``, defaulting to
            ``default_collate``); ``None``: the config key
            ``monitor_dataloader``.

    Raises:
        ValueError: A bad ``interval``/``knn_k``, or no held-out loader.
        TypeError: A model without ``monitor_outputs`` (not M3I).
    """

    priority = 'NORMAL'

    def __init__(self,
                 interval: int,
                 num_samples: Optional[int] = None,
                 knn_k: int = 20,
                 category: bool = True,
                 dataloader: Optional[dict] = None) -> None:
        for name, value in (('interval', interval), ('knn_k', knn_k)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'M3IMonitorHook: {name} must be a '
                                 f'positive integer, got {value!r}')
        self.interval = interval
        self.num_samples = num_samples
        self.knn_k = knn_k
        self.category = category
        self.dataloader = dataloader
        self.loader: Optional[DataLoader] = None
        # Wall-clock seconds spent in the monitors (benchmarks/monitors.py).
        self.seconds = 0.0

    def before_train(self, runner) -> None:
        cfg = self.dataloader or runner.cfg.get(CONFIG_KEY)
        if not cfg or 'dataset' not in cfg:
            raise ValueError(
                f'M3IMonitorHook needs a held-out loader: set the config key '
                f'{CONFIG_KEY} (a dict with a dataset, like val_dataloader) '
                f'or the hook\'s dataloader, or turn the monitors off with '
                f'default_hooks.monitor=None; got {cfg!r}')
        if not hasattr(self._model(runner), 'monitor_outputs'):
            raise TypeError(
                f'M3IMonitorHook scores M3I models (monitor_outputs), not '
                f'{type(self._model(runner)).__name__}; set '
                f'default_hooks.monitor=None')
        self.dataloader = dict(cfg)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not (self.every_n_train_iters(runner, self.interval)
                and is_main_process()):
            return
        start = time.perf_counter()
        with preserved_rng():
            results = self.evaluate(self._model(runner))
        self.seconds += time.perf_counter() - start
        runner.visualizer.add_scalars(results, step=runner.iter + 1)
        runner.logger.info(f'Monitors at iteration {runner.iter + 1}: ' +
                           ', '.join(f'{k} {v:.2f}'
                                     for k, v in results.items()))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> Dict[str, float]:
        """:func:`monitor_accuracies` of ``model`` on the held-out subset."""
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            batches = [(model.monitor_outputs(data['inputs']),
                        torch.cat([s.gt_label for s in data['data_samples']]))
                       for data in map(
                           partial(model.data_preprocessor, training=False),
                           self._loader())]
        finally:
            for module, mode in modes:  # parents first: exact restore
                module.train(mode)
        outputs = {
            key: torch.cat([out[key] for out, _ in batches]).float().cpu()
            for key in batches[0][0] if self.category or key != 'category'
        }
        labels = torch.cat([label for _, label in batches]).cpu()
        return monitor_accuracies(outputs, labels, self.knn_k)

    def _loader(self) -> DataLoader:
        """The held-out subset's loader, built on first use (rank 0)."""
        if self.loader is None:
            cfg = self.dataloader
            dataset = build_dataset(cfg['dataset'])
            collate = dict(cfg.get('collate_fn',
                                   dict(type='default_collate')))
            collate_fn = FUNCTIONS.get(collate.pop('type'))
            self.loader = DataLoader(
                Subset(dataset, heldout_indices(len(dataset),
                                                self.num_samples)),
                batch_size=cfg.get('batch_size', 128),
                num_workers=cfg.get('num_workers', 0),
                collate_fn=partial(collate_fn, **collate),
                generator=torch.Generator())
        return self.loader

    @staticmethod
    def _model(runner) -> torch.nn.Module:
        return runner.model.module if is_model_wrapper(
            runner.model) else runner.model
