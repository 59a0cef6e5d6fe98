"""Per-rank memory of M3I's parameters and optimizer: DDP against sharding.

The model of a config (by default InternImage-H,
``configs/pretrain/m3i_internimage-h.py``) is built on the meta device:
shapes only, nothing allocated, no GPU. Counted per rank, in fp32 (the
master weights):

- parameters: the trainable ones (backbone, decoder, heads, category
  embedding), 4 B each;
- momentum encoder: the EMA copy of the backbone (frozen), 4 B each;
- gradients: 4 B per trainable parameter;
- AdamW: ``exp_avg`` and ``exp_avg_sq``, 8 B per trainable parameter.

DDP keeps all of it on every rank. ``M3IFullyShardWrapper`` (FSDP2) keeps
on each rank ``ceil(dim0 / W)`` rows of every parameter (FSDP2's padded
``Shard(0)`` layout) and of its gradient and AdamW state; while a group
(a layer, the backbone's or momentum encoder's remainder, the root) runs,
its full parameters and, in the backward pass, their gradients exist
too: the "unsharded working set" row is the largest group's, in the
``param_dtype`` of the mixed-precision policy (bf16 in the ``_fsdp``
configs, 2 B).

Activations are not counted (they depend on the batch; see ``with_cp``).

Usage:
    python benchmarks/memory.py [--config CONFIG] [--world 8]
"""
import argparse
import math
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope

import m3i_mm  # noqa: F401
from m3i_mm.engine.fully_shard import shard_groups

GiB = 1024**3


def build_meta(config: str) -> nn.Module:
    """The config's model with every tensor on the meta device."""
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(config)
    with torch.device('meta'):
        return MODELS.build(cfg.model)


def shard_numel(shape: Tuple[int, ...], world: int) -> int:
    """Elements a rank holds of a parameter sharded on dim 0 over ``world``
    ranks (FSDP2 pads dim 0 to a multiple of ``world``)."""
    if not shape:
        return 1
    return math.ceil(shape[0] / world) * math.prod(shape[1:])


def group_sizes(model: nn.Module) -> List[int]:
    """Parameter count of each FSDP group of :func:`shard_groups` (a group
    holds its module's parameters not in an inner group)."""
    seen, sizes = set(), []
    for group in shard_groups(model):
        params = [p for p in group.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        sizes.append(sum(p.numel() for p in params))
    return sizes


def memory_per_rank(model: nn.Module, world: int,
                    working_bytes: int = 2) -> Dict[str, Dict[str, float]]:
    """Bytes per rank of each item, for ``'ddp'`` and ``'sharded'``.

    Args:
        model (nn.Module): An M3I model (e.g. on the meta device).
        world (int): Number of ranks.
        working_bytes (int): Bytes per element of a group's unsharded
            parameters and gradients (the ``param_dtype``). Defaults to 2.

    Returns:
        dict: ``{item: {'ddp': bytes, 'sharded': bytes}}`` with a ``total``.
    """
    target = model.image_target.ema.module.parameters() \
        if hasattr(model.image_target, 'ema') else []
    frozen = {id(p) for p in target}
    trainable = [p for p in model.parameters()
                 if p.requires_grad and id(p) not in frozen]
    momentum = [p for p in model.parameters() if id(p) in frozen]

    def both(params, nbytes):
        return dict(
            ddp=nbytes * sum(p.numel() for p in params),
            sharded=nbytes * sum(shard_numel(tuple(p.shape), world)
                                 for p in params))

    rows = {
        'parameters (fp32)': both(trainable, 4),
        'momentum encoder (fp32)': both(momentum, 4),
        'gradients (fp32)': both(trainable, 4),
        'AdamW exp_avg + exp_avg_sq': both(trainable, 8),
    }
    rows['unsharded working set'] = dict(
        ddp=0, sharded=2 * working_bytes * max(group_sizes(model)))
    rows['total'] = {k: sum(r[k] for r in rows.values())
                     for k in ('ddp', 'sharded')}
    return rows


def table(rows: Dict[str, Dict[str, float]], world: int) -> str:
    """A markdown table of :func:`memory_per_rank`, in GiB."""
    lines = [f'| per rank, {world} ranks | DDP (GiB) | sharded (GiB) |',
             '|---|---:|---:|']
    for item, value in rows.items():
        lines.append(f'| {item} | {value["ddp"] / GiB:.2f} | '
                     f'{value["sharded"] / GiB:.2f} |')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config',
                        default='configs/pretrain/m3i_internimage-h.py')
    parser.add_argument('--world', type=int, default=8)
    args = parser.parse_args()
    model = build_meta(args.config)
    online = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f'{args.config}: {online / 1e6:.1f}M trainable parameters, '
          f'{len(shard_groups(model))} FSDP groups')
    print(table(memory_per_rank(model, args.world), args.world))


if __name__ == '__main__':
    main()
