"""The runner of m3i_mm configs (``runner_type='M3IRunner'``)."""
import atexit
import copy
import datetime
import re
from inspect import isclass
from typing import List, Optional, Union

import torch
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import DATASETS, MODEL_WRAPPERS, OPTIMIZERS, RUNNERS
from mmengine.runner import CheckpointLoader, Runner
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset

from m3i_mm.datasets.non_empty import build_dataset
from m3i_mm.engine.checkpoint.resume import (NoIntactCheckpointError,
                                             checkpoint_damage,
                                             find_resumable_checkpoint)
from m3i_mm.engine.dataloader import (ExitWithParent, SeededDataset,
                                      stop_workers)
from m3i_mm.engine.fully_shard import M3IFullyShardWrapper
from m3i_mm.engine.hooks.preemption import PreemptionHook
from m3i_mm.engine.optimizers.amp import no_accelerator
from m3i_mm.utils.config import close_matches

__all__ = ['CheckpointMismatchError', 'M3IRunner']


class CheckpointMismatchError(RuntimeError):
    """A checkpoint given by ``load_from`` does not fit the model."""


def _mismatch_lists(message: str) -> dict:
    """Keys named in mmengine's ``load_state_dict`` strict error message."""
    lists = {}
    for kind, pattern in (('unexpected', r'unexpected key in source '
                           r'state_dict: ([^\n]*)'),
                          ('missing', r'missing keys in source '
                           r'state_dict: ([^\n]*)')):
        found = re.search(pattern, message)
        lists[kind] = found.group(1).split(', ') if found else []
    lists['mismatched'] = re.findall(r'size mismatch for ([^:]+):', message)
    return lists


def _registry_names(registry) -> List[str]:
    """Names registered in ``registry`` and its ancestors."""
    names = []
    while registry is not None:
        names.extend(registry.module_dict)
        registry = registry.parent
    return names


def _map_style(dataset_cfg: dict) -> bool:
    """Whether ``dataset_cfg`` builds a map-style dataset (its class, looked
    up in the current scope, is no ``IterableDataset``)."""
    kind = dataset_cfg.get('type')
    if isinstance(kind, str):
        with DATASETS.switch_scope_and_registry(None) as registry:
            kind = registry.get(kind)
    return isclass(kind) and not issubclass(kind, IterableDataset)


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _plain_param_groups(optimizer: torch.optim.Optimizer) -> None:
    """Make the optimizer's param groups plain dicts.

    mmengine's registry builds the optimizer from a ``ConfigDict``, so the
    groups of ``paramwise_cfg`` arrive as ``ConfigDict`` s, which dynamo
    cannot trace: with ``compile=True`` (the whole ``train_step``, the
    optimizer step included) the first step failed with
    ``InternalTorchDynamoError: 'UserDefinedDictVariable' object has no
    attribute 'items'`` (mmengine 0.10.x, torch 2.13).
    """
    optimizer.param_groups[:] = [dict(g) for g in optimizer.param_groups]


@RUNNERS.register_module()
class M3IRunner(Runner):
    """mmengine's ``Runner`` (onedl-mmengine 0.10.12, mmengine 0.10.7) with
    the run behaviour of m3i_mm; chosen by ``runner_type='M3IRunner'``
    (``configs/_base_/default_runtime.py``), also by mmpretrain's, mmdet's
    and mmseg's ``tools/train.py``.

    - ``load_from`` is strict (:meth:`load_checkpoint`, config key
      ``load_strict``).
    - Automatic resume finds an intact checkpoint of the work dir (every zip
      member's CRC, finite weights), refusing a ``last_checkpoint`` that
      names a URL or another folder, and never starts over when only
      damaged checkpoints are there
      (:func:`m3i_mm.engine.checkpoint.find_resumable_checkpoint`).
    - Data-loader workers die with the trainer (:class:`ExitWithParent`)
      and the map-style train dataset seeds each sample from its
      :class:`~m3i_mm.utils.randomness.SeededIndex` (:class:`SeededDataset`).
    - ``--launcher pytorch`` runs on a CPU (gloo, DDP without device ids).
    - An unknown optimizer type is named when the optimizer is built.
    - The run's loaders stop their workers when ``train`` / ``val`` /
      ``test`` returns (:func:`stop_workers`), and a process group the
      runner started is destroyed at exit: the trainer exits when done.
    - :class:`PreemptionHook`'s signal handlers are put back however
      training ends.
    - ``None`` switches off any default hook, not only mmengine's own
      (e.g. ``default_hooks.monitor=None``).
    - A sharded model (``model_wrapper_cfg=dict(type='M3IFullyShardWrapper')``)
      is saved as the full (unsharded) state, gathered on rank 0, and loaded
      and resumed from it.
    """

    def register_default_hooks(self, hooks: Optional[dict] = None) -> None:
        """mmengine's, where a ``None`` entry of a hook mmengine does not
        know is dropped (mmengine asserts on it)."""
        mmengine_defaults = ('runtime_info', 'timer', 'sampler_seed',
                             'logger', 'param_scheduler', 'checkpoint')
        if hooks is not None:
            hooks = {name: hook for name, hook in hooks.items()
                     if hook is not None or name in mmengine_defaults}
        super().register_default_hooks(hooks)

    _full_state = None  # (model, optimizer) of a sharded model being saved
    _resume_sharded_optimizer = False

    def save_checkpoint(self, *args, **kwargs) -> None:
        """``Runner.save_checkpoint`` (rank 0); a sharded model's full state
        is first gathered by every rank (a collective) and then written by
        rank 0 in place of the shards."""
        if isinstance(self.model, M3IFullyShardWrapper):
            self._full_state = self.model.full_state_dict(self.optim_wrapper)
        try:
            super().save_checkpoint(*args, **kwargs)
        finally:
            self._full_state = None

    def call_hook(self, fn_name: str, **kwargs) -> None:
        """Hooks; before ``before_save_checkpoint`` the checkpoint of a
        sharded model gets the gathered full state."""
        if fn_name == 'before_save_checkpoint' and self._full_state:
            checkpoint = kwargs['checkpoint']
            checkpoint['state_dict'] = self._full_state[0]
            if 'optimizer' in checkpoint:
                checkpoint['optimizer'].update(self._full_state[1])
        super().call_hook(fn_name, **kwargs)

    def _init_model_weights(self) -> None:
        """``Runner._init_model_weights`` (``init_weights``, then every
        tensor broadcast from rank 0); a sharded model was initialised and
        broadcast by :class:`M3IFullyShardWrapper` before sharding."""
        if not isinstance(self.model, M3IFullyShardWrapper):
            super()._init_model_weights()

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location='default') -> None:
        """``Runner.resume``; a sharded model's optimizer state is sharded
        by :meth:`M3IFullyShardWrapper.load_full_state_dict`."""
        if not isinstance(self.model, M3IFullyShardWrapper):
            return super().resume(filename, resume_optimizer,
                                  resume_param_scheduler, map_location)
        self._resume_sharded_optimizer = resume_optimizer
        try:
            super().resume(filename, False, resume_param_scheduler, 'cpu')
        finally:
            self._resume_sharded_optimizer = False

    def setup_env(self, env_cfg: dict) -> None:
        """Without an accelerator, ``--launcher pytorch`` starts a gloo
        group here: mmengine's ``_init_dist_pytorch`` calls
        ``torch.cuda.set_device`` unconditionally and uses the config's
        backend (``nccl``); ``Runner.setup_env`` skips an initialised group.
        A group started here is destroyed at exit.
        """
        started = self.distributed and not is_distributed()
        if (self.distributed and self.launcher == 'pytorch'
                and not is_distributed() and no_accelerator()):
            dist_cfg = dict(env_cfg.get('dist_cfg', {}))
            if dist_cfg.pop('backend', 'nccl') != 'gloo':
                print_log('No GPU: torch.distributed uses gloo',
                          logger='current')
            if dist_cfg.get('timeout') is not None:
                dist_cfg['timeout'] = datetime.timedelta(
                    seconds=dist_cfg['timeout'])
            torch.distributed.init_process_group(backend='gloo', **dist_cfg)
        super().setup_env(env_cfg)
        if started and is_distributed():
            # mmengine never destroys the group it starts (NCCL's teardown
            # at exit can then wait on the other ranks).
            atexit.register(_destroy_process_group)

    def wrap_model(self, model_wrapper_cfg: Optional[dict],
                   model: torch.nn.Module) -> torch.nn.Module:
        """Without an accelerator, DDP gets no ``device_ids`` (mmengine
        gives ``[LOCAL_RANK]``, which DDP refuses for a CPU model)."""
        cpu_ddp = self.distributed and no_accelerator()
        if cpu_ddp and not is_model_wrapper(model):
            # mmengine's default wrapper, as a config
            cfg = dict(model_wrapper_cfg or dict(
                broadcast_buffers=False,
                find_unused_parameters=self.cfg.get(
                    'find_unused_parameters', False)))
            cfg.setdefault('type', 'MMDistributedDataParallel')
            wrapper = cfg['type']
            if isinstance(wrapper, str):
                wrapper = MODEL_WRAPPERS.get(wrapper)
            if isclass(wrapper) and issubclass(wrapper,
                                               DistributedDataParallel):
                cfg.setdefault('device_ids', None)
            model_wrapper_cfg = cfg
        return super().wrap_model(model_wrapper_cfg, model)

    def build_optim_wrapper(self, optim_wrapper):
        """mmengine (all 0.10.x) fails on an unknown
        ``optim_wrapper.optimizer.type`` (e.g. ``AdamWW``) with ``None is not
        a callable object``: raise ``KeyError`` naming it and close names."""
        optimizer = optim_wrapper.get('optimizer') if isinstance(
            optim_wrapper, dict) else None
        name = optimizer.get('type') if isinstance(optimizer, dict) else None
        if isinstance(name, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                if registry.get(name) is None:
                    raise KeyError(
                        f'optim_wrapper.optimizer.type={name!r} is not in '
                        f'the {registry.scope}::optimizer registry'
                        f'{close_matches(name, _registry_names(registry))}')
        wrapper = super().build_optim_wrapper(optim_wrapper)
        wrappers = wrapper.values() if isinstance(wrapper, OptimWrapperDict) \
            else [wrapper]
        for one in wrappers:
            _plain_param_groups(one.optimizer)
        return wrapper

    def build_train_loop(self, loop):
        """Wrap a map-style train dataset's config in :class:`SeededDataset`
        (the train loop builds its loader from it)."""
        loader = self._train_dataloader
        if isinstance(loader, dict) and isinstance(
                loader.get('dataset'), dict) and _map_style(loader['dataset']):
            loader = copy.copy(loader)
            loader['dataset'] = dict(
                type=SeededDataset, dataset=loader['dataset'])
            self._train_dataloader = loader
        return super().build_train_loop(loop)

    @staticmethod
    def build_dataloader(dataloader: Union[DataLoader, dict],
                         seed: Optional[int] = None,
                         diff_rank_seed: bool = False) -> DataLoader:
        """``Runner.build_dataloader`` whose workers die with the trainer
        (:class:`ExitWithParent` around ``worker_init_fn``): mmengine's
        persistent workers outlive a ``kill -9`` of the trainer (torch 2.x).
        The dataset is built by :func:`m3i_mm.datasets.build_dataset`, so an
        empty one fails naming where it looked.
        """
        if isinstance(dataloader, dict) and isinstance(
                dataloader.get('dataset'), dict):
            dataloader = dict(dataloader,
                              dataset=build_dataset(dataloader['dataset']))
        loader = Runner.build_dataloader(dataloader, seed, diff_rank_seed)
        if (loader.num_workers > 0
                and not isinstance(loader.worker_init_fn, ExitWithParent)):
            loader.worker_init_fn = ExitWithParent(loader.worker_init_fn)
        return loader

    def train(self) -> torch.nn.Module:
        """``Runner.train`` that puts back the signal handlers of
        :class:`PreemptionHook` and stops the loaders' workers however
        training ends (mmengine calls no hook after an exception; an
        in-process caller keeps its own handlers)."""
        try:
            return super().train()
        finally:
            for hook in self.hooks:
                if isinstance(hook, PreemptionHook):
                    hook.restore_signal_handlers()
            self._stop_loader_workers()

    def val(self) -> dict:
        """``Runner.val`` that stops the loader's workers at the end."""
        try:
            return super().val()
        finally:
            self._stop_loader_workers()

    def test(self) -> dict:
        """``Runner.test`` that stops the loader's workers at the end."""
        try:
            return super().test()
        finally:
            self._stop_loader_workers()

    def _stop_loader_workers(self) -> None:
        # Loops not built (still configs) have no loader.
        for loop in (self._train_loop, self._val_loop, self._test_loop):
            loader = getattr(loop, 'dataloader', None)
            if isinstance(loader, DataLoader):
                stop_workers(loader)

    def load_or_resume(self) -> None:
        """Automatic resume (``resume=True`` without ``load_from``) from
        :func:`find_resumable_checkpoint` instead of mmengine's
        ``find_latest_checkpoint``; a checkpoint named by ``--resume PATH``
        must be intact too (:func:`checkpoint_damage`)."""
        if self._has_loaded or not self._resume:
            return super().load_or_resume()
        if self._load_from:
            local = '://' not in str(self._load_from)
            damage = local and checkpoint_damage(self._load_from)
            if damage:
                raise NoIntactCheckpointError(
                    f'Cannot resume from {self._load_from}: {damage}.')
            return super().load_or_resume()
        resume_from = find_resumable_checkpoint(self.work_dir)
        if resume_from is not None:
            self.logger.info(
                f'Auto resumed from the latest checkpoint {resume_from}.')
            self.resume(resume_from)
            self._has_loaded = True

    def load_checkpoint(self,
                        filename: str,
                        map_location='cpu',
                        strict: Optional[bool] = None,
                        revise_keys: list = [(r'^module.', '')]):
        """``Runner.load_checkpoint`` that refuses a checkpoint of another
        architecture.

        mmengine (all 0.10.x) loads ``load_from`` (and ``tools/test.py``'s
        checkpoint) non-strictly: a checkpoint of another architecture only
        logs a warning and the run goes on with random weights. Without an
        explicit ``strict``, the top-level config key ``load_strict`` rules:

        - ``None`` (default): refuse a checkpoint with a shape mismatch,
          with more unexpected keys than loaded ones, that loads no tensor
          (an empty or missing ``state_dict``: ``tools/test.py`` would report
          the random-init model's metrics) or no tensor of a model's
          ``backbone`` (keys without the ``backbone.`` prefix: mmengine
          would only warn and train from a random backbone). Missing keys (a
          pre-trained backbone for a model with a new head) and a few
          unexpected ones (a converted backbone's final norm the downstream
          model does not use) only warn.
        - ``True``: refuse any difference (torch's ``strict=True``).
        - ``False``: load what matches, warn about the rest (mmengine's).

        Raises:
            CheckpointMismatchError: Names the file and the keys. Only rank
                0 detects it (mmengine's check), which ends the job.
        """
        if isinstance(self.model, M3IFullyShardWrapper):
            return self._load_sharded(filename)
        load = super().load_checkpoint
        if strict is not None:
            return load(filename, map_location, strict, revise_keys)
        mode = self.cfg.get('load_strict', None)
        if mode not in (None, True, False):
            raise ValueError(f'load_strict must be None, True or False, got '
                             f'{mode!r}')
        if mode is False:
            return load(filename, map_location, False, revise_keys)
        try:
            return load(filename, map_location, True, revise_keys)
        except RuntimeError as err:
            keys = _mismatch_lists(str(err))
            if not any(keys.values()):
                raise
            model = self.model.module if is_model_wrapper(
                self.model) else self.model
            own = [k for k in model.state_dict()
                   if 'num_batches_tracked' not in k]
            loaded = len(own) - len(keys['missing']) - len(
                keys['mismatched'])
            if not mode and not keys['mismatched'] and len(
                    keys['unexpected']) <= loaded:
                # Loading nothing, or no backbone, only warned upstream.
                if loaded <= 0:
                    raise CheckpointMismatchError(
                        f'Checkpoint {filename} loads no tensor into the '
                        f'model {type(model).__name__}: its state_dict is '
                        'empty, missing or has none of the model\'s keys '
                        f'({len(keys["unexpected"])} unexpected key(s)). '
                        'Evaluating or training from it would use random '
                        'weights (load_strict=False loads it anyway).')
                backbone = [k for k in own if k.startswith('backbone.')]
                if backbone and set(backbone) <= set(keys['missing']):
                    raise CheckpointMismatchError(
                        f'Checkpoint {filename} loads no backbone tensor '
                        f'into the model {type(model).__name__}: all '
                        f'{len(backbone)} backbone.* keys are missing (keys '
                        'without the "backbone." prefix? unexpected: '
                        f'{", ".join(keys["unexpected"][:3])}). Convert it '
                        '(tools/model_converters/) or set load_strict=False '
                        'to load the other weights anyway.')
                return load(filename, map_location, False, revise_keys)
            summary = '; '.join(
                f'{len(names)} {kind} key(s): {", ".join(names[:5])}'
                f'{", ..." if len(names) > 5 else ""}'
                for kind, names in keys.items() if names)
            raise CheckpointMismatchError(
                f'Checkpoint {filename} does not fit the model '
                f'{type(model).__name__} ({summary}). Set '
                'load_strict=False (e.g. --cfg-options load_strict=False) to '
                'load the matching weights anyway.') from None

    def _load_sharded(self, filename: str) -> dict:
        """Shard a full checkpoint into the sharded model (strict about the
        keys) and, when resuming, into the optimizer."""
        checkpoint = CheckpointLoader.load_checkpoint(
            filename, map_location='cpu')
        optim_state = None
        if self._resume_sharded_optimizer and 'optimizer' in checkpoint:
            self.optim_wrapper = self.build_optim_wrapper(self.optim_wrapper)
            optim_state = checkpoint['optimizer']
        self.model.load_full_state_dict(checkpoint['state_dict'],
                                        self.optim_wrapper, optim_state)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
