"""Fully-sharded data parallel M3I (torch FSDP2 ``fully_shard``).

Chosen in a config by
``model_wrapper_cfg = dict(type='M3IFullyShardWrapper')`` (see
``configs/pretrain/m3i_vitl_fsdp.py``): each rank keeps 1/W of every
parameter, gradient and AdamW state; a layer's full parameters exist only
while it runs (all-gather before, reduce-scatter of the gradients after).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.optim import OptimWrapper
from mmengine.registry import MODEL_WRAPPERS
from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                     get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from m3i_mm.models.target_encoders import MomentumImageTarget

__all__ = ['M3IFullyShardWrapper', 'shard_groups']

# One FSDP group per ViT layer (mmpretrain's and torch's, the decoder's)
# and per InternImage block.
DEFAULT_SHARD_MODULES = ('TransformerEncoderLayer', 'InternImageBlock')


def shard_groups(model: nn.Module,
                 shard_modules: Sequence[str] = DEFAULT_SHARD_MODULES
                 ) -> Tuple[nn.Module, ...]:
    """The submodules of ``model`` that get their own ``fully_shard``, in the
    order to apply it (children before parents; ``model`` itself last).

    Modules whose class (or a base class) is named in ``shard_modules``,
    plus the backbone and the momentum copy of a :class:`MomentumImageTarget`
    as whole groups: both are sharded alike between their forwards, where
    the EMA update averages them shard by shard.
    """
    momentum = getattr(model, 'image_target', None)
    whole = [getattr(model, 'backbone', None)]
    if isinstance(momentum, MomentumImageTarget):
        whole.append(momentum.ema.module)
    groups = [
        module for name, module in model.named_modules()
        if name and (any(module is w for w in whole) or any(
            c.__name__ in shard_modules for c in type(module).__mro__))
    ]
    return tuple(reversed(groups)) + (model, )


def _mp_policy(cfg: Optional[dict]) -> MixedPrecisionPolicy:
    """``MixedPrecisionPolicy`` from a config dict of dtype names."""
    cfg = dict(cfg or {})
    for key in ('param_dtype', 'reduce_dtype', 'output_dtype'):
        if isinstance(cfg.get(key), str):
            dtype = getattr(torch, cfg[key], None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f'model_wrapper_cfg.mp_policy.{key}='
                                 f'{cfg[key]!r} is not a torch dtype')
            cfg[key] = dtype
    return MixedPrecisionPolicy(**cfg)


def _average_grad(param: torch.Tensor) -> None:
    """Average a replicated parameter's gradient over all ranks."""
    dist.all_reduce(param.grad)
    param.grad /= dist.get_world_size()


@MODEL_WRAPPERS.register_module()
class M3IFullyShardWrapper(nn.Module):
    """Shards an M3I model over all ranks with FSDP2 ``fully_shard``.

    ``fully_shard`` is applied per layer (:func:`shard_groups`), to the
    backbone and the momentum target encoder, then to the whole model.
    M3I's parts keep their meaning:

    - gradients are averaged over ranks (reduce-scatter), as DDP averages
      them, so the per-rank loss shares of
      :func:`~m3i_mm.models.utils.per_rank_share` and the all-rank gathers
      of global targets (:func:`~m3i_mm.models.utils.gather_with_grad`)
      give the gradient of the global loss;
    - the momentum encoder is updated on each rank's shards: online and
      momentum parameters are DTensors with the same placements, the EMA's
      in-place ops run on the local shards without communication;
    - λ's gradient taps and :class:`GradientNormBalancer` state are buffers,
      which are not sharded (each rank measures, ``reduce_pending``
      averages);
    - 0-dim parameters (the text posterior's temperature), which
      ``fully_shard`` refuses, are replicated and their gradients averaged
      over ranks.

    Checkpoints: :meth:`full_state_dict` gathers full (plain, CPU) tensors
    on rank 0, :meth:`load_full_state_dict` shards them back; ``M3IRunner``
    uses them so that checkpoints stay those of an unsharded model.

    The model's ``init_weights`` runs before sharding, on the full
    parameters as in an unsharded run, and rank 0's weights are broadcast
    (``M3IRunner`` skips its own initialisation of a sharded model).

    Args:
        module (nn.Module): The model (M3I), on its device.
        shard_modules (Sequence[str]): Class names that get their own FSDP
            group. Defaults to ViT / decoder layers and InternImage blocks.
        mp_policy (dict, optional): ``MixedPrecisionPolicy`` arguments, dtypes
            by name, e.g. ``dict(param_dtype='bfloat16',
            reduce_dtype='float32')``. Defaults to fp32 throughout.

    Raises:
        RuntimeError: Without an initialised process group.
        ValueError: For a mixer with ``drop_masked`` (its ViT layers are
            called outside the backbone's forward) or a bad dtype name.
    """

    def __init__(self,
                 module: nn.Module,
                 shard_modules: Sequence[str] = DEFAULT_SHARD_MODULES,
                 mp_policy: Optional[dict] = None) -> None:
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError('M3IFullyShardWrapper needs torch.distributed '
                               '(tools/dist_train.sh or --launcher pytorch)')
        if getattr(getattr(module, 'mixer', None), 'drop_masked', False):
            raise ValueError('M3IFullyShardWrapper: mixer.drop_masked=True '
                             'runs the ViT layers outside the backbone\'s '
                             'forward; use it with DDP')
        policy = _mp_policy(mp_policy)
        if isinstance(module, BaseModule) and not module.is_init:
            module.init_weights()  # on the full parameters
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)  # rank 0's, as mmengine's runner
        # fully_shard refuses 0-dim parameters (e.g. the text temperature):
        # replicated, their gradients averaged as DDP would.
        scalars = {p for p in module.parameters() if p.dim() == 0}
        for param in scalars:
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(_average_grad)
        for group in shard_groups(module, shard_modules):
            fully_shard(group, mp_policy=policy, ignored_params=scalars)
        for target in module.modules():
            if isinstance(target, MomentumImageTarget):
                target.track_parameters()
        self.module = module

    def train_step(self, data, optim_wrapper: OptimWrapper
                   ) -> Dict[str, torch.Tensor]:
        """Forward, backward (gradients reduce-scattered) and optimizer step
        of one batch, as mmengine's ``MMDistributedDataParallel``."""
        with optim_wrapper.optim_context(self):
            data = self.module.data_preprocessor(data, training=True)
            losses = self._run_forward(data, mode='loss')
        parsed_loss, log_vars = self.module.parse_losses(losses)
        optim_wrapper.update_params(parsed_loss)
        return log_vars

    def val_step(self, data) -> list:
        """Predictions of a validation batch (the model's ``val_step``)."""
        return self.module.val_step(data)

    def test_step(self, data) -> list:
        """Predictions of a test batch (the model's ``test_step``)."""
        return self.module.test_step(data)

    def _run_forward(self, data, mode: str):
        if isinstance(data, dict):
            return self.module(**data, mode=mode)
        if isinstance(data, (list, tuple)):
            return self.module(*data, mode=mode)
        raise TypeError('Output of `data_preprocessor` should be list, '
                        f'tuple or dict, but got {type(data)}')

    def full_state_dict(self, optim_wrapper: Optional[OptimWrapper] = None
                        ) -> Tuple[dict, Optional[dict]]:
        """The unsharded model (and optimizer) state, on rank 0.

        A collective: every rank must call it. Rank 0 gets plain CPU tensors
        (the keys of the unsharded model's ``state_dict``; the optimizer's
        state keyed by parameter name, torch's
        ``get_optimizer_state_dict``), the other ranks empty dicts.
        """
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = get_model_state_dict(self.module, options=options)
        optim = None if optim_wrapper is None else get_optimizer_state_dict(
            self.module, optim_wrapper.optimizer, options=options)
        return model, optim

    def load_full_state_dict(self, state_dict: dict,
                             optim_wrapper: Optional[OptimWrapper] = None,
                             optim_state: Optional[dict] = None) -> None:
        """Shard the full states of :meth:`full_state_dict` (given on every
        rank) into the model and optimizer; strict about keys."""
        options = StateDictOptions(full_state_dict=True, strict=True)
        set_model_state_dict(self.module, state_dict, options=options)
        if optim_state is not None:
            set_optimizer_state_dict(self.module, optim_wrapper.optimizer,
                                     optim_state, options=options)
        for target in self.module.modules():
            if isinstance(target, MomentumImageTarget):
                target.track_parameters()
