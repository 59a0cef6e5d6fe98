"""A hook for tests/test_dist_train.py, imported by the trained config.

It runs inside the processes that ``tools/dist_train.sh`` / ``tools/train.py``
start: replaces each batch with this rank's slice of a prepared global
batch, turns dropout off (so two runs compute the same function), and
writes per rank and iteration a hash of all parameters, the losses and λ.
"""
import hashlib
import os.path as osp

import torch
import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch.distributed.tensor import DTensor

import m3i_mm.models.utils.multi_input as multi_input


@HOOKS.register_module()
class DDPProbeHook(Hook):
    """Args: batches (str): ``torch.save``'d list of global batches (dicts
    of ``inputs`` and ``data_samples``); out_dir (str): where to write;
    virtual_ranks (int): in a 1-process run, draw the mixing partners
    within each of this many slices of the batch, with the draws each rank
    makes (the ranks draw from the same seed); roll_partners (bool): mix
    each image with the previous one of its rank's batch instead of a random
    partner (the same in every run, resumed ones included). Sharded
    parameters are gathered."""

    priority = 'VERY_HIGH'

    def __init__(self, batches: str, out_dir: str,
                 virtual_ranks: int = 1, roll_partners: bool = False) -> None:
        self.batches = torch.load(batches, weights_only=False)
        self.out_dir = out_dir
        self.virtual_ranks = virtual_ranks
        self.roll_partners = roll_partners

    def before_train(self, runner) -> None:
        for module in runner.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if hasattr(module, 'dropout_prob'):  # BERT's SDPA attention
                module.dropout_prob = 0.0
        parts = self.virtual_ranks
        if self.roll_partners:
            multi_input.derangement = lambda n, generator=None, device=None: \
                torch.arange(n, device=device).view(parts, -1).roll(
                    1, 1).flatten()
        elif self.virtual_ranks > 1:
            draw = multi_input.derangement

            def per_rank(n, generator=None, device=None):
                state = torch.get_rng_state()
                sigmas = []
                for r in range(parts):
                    torch.set_rng_state(state)
                    sigmas.append(draw(n // parts, device=device) +
                                  r * (n // parts))
                return torch.cat(sigmas)

            multi_input.derangement = per_rank

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        rank, world = get_dist_info()
        batch = self.batches[runner.iter]
        size = len(batch['data_samples']) // world
        part = slice(rank * size, (rank + 1) * size)
        data_batch['inputs'] = [v[part] for v in batch['inputs']]
        data_batch['data_samples'] = batch['data_samples'][part]

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        rank, _ = get_dist_info()
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        params = torch.cat([
            (p.full_tensor() if isinstance(p, DTensor) else p).detach(
            ).flatten() for p in model.parameters()
        ])
        record = dict(
            sha=hashlib.sha256(params.numpy().tobytes()).hexdigest(),
            outputs={k: float(v) for k, v in outputs.items()},
            lam=float(model.loss_balancer.weight))
        if runner.iter + 1 == len(self.batches):
            record['params'] = params.clone()
            record['names'] = [(n, p.numel())
                               for n, p in model.named_parameters()]
        torch.save(record,
                   osp.join(self.out_dir, f'rank{rank}_iter{runner.iter}.pt'))
