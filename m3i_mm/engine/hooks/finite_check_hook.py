"""Stop training at the first non-finite loss or parameter."""
import math
import os.path as osp
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from m3i_mm.registry import HOOKS


def non_finite_losses(log_vars: Dict) -> List[Tuple[str, float]]:
    """The loss terms of a train step's log vars that are NaN or infinite.

    Loss terms are the keys holding ``'loss'``, the ones mmengine's
    ``BaseModel.parse_losses`` sums. One host sync when all are finite.

    Args:
        log_vars (dict): ``train_step``'s output: name -> scalar tensor or
            number.

    Returns:
        list[tuple[str, float]]: ``(name, value)`` of each non-finite term.
    """
    terms = {k: v for k, v in log_vars.items() if 'loss' in k}
    tensors = [v.detach().reshape(-1).float() for v in terms.values()
               if isinstance(v, torch.Tensor)]
    numbers = [float(v) for v in terms.values()
               if not isinstance(v, torch.Tensor)]
    if (all(math.isfinite(v) for v in numbers)
            and (not tensors or bool(torch.isfinite(torch.cat(tensors)).all()))):
        return []
    values = {k: float(v.detach().float().mean()) if isinstance(
        v, torch.Tensor) else float(v) for k, v in terms.items()}
    return [(k, v) for k, v in values.items() if not math.isfinite(v)]


def _tensors(obj, path: str) -> Iterator[Tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f'{path}.{key}' if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f'{path}.{i}')


def non_finite_tensors(checkpoint: Dict,
                       buffers: Sequence[str] = ()) -> List[str]:
    """Paths of the checkpoint tensors that hold NaN or infinite values.

    Buffers (``running_var``, masks) may legitimately hold ``-inf``: for the
    ``state_dict`` entries named in ``buffers`` only NaN counts. The
    ``message_hub`` (the logged history) is not checked.

    Args:
        checkpoint (dict): What ``Runner.save_checkpoint`` is about to write.
        buffers (Sequence[str]): ``state_dict`` keys that are buffers.

    Returns:
        list[str]: Dotted paths, e.g. ``'state_dict.backbone.cls_token'``.
    """
    buffers = {f'state_dict.{name}' for name in buffers}
    checked = [(path, t) for path, t in _tensors(
        {k: v for k, v in checkpoint.items() if k != 'message_hub'}, '')
               if t.is_floating_point() or t.is_complex()]
    if not checked:
        return []
    ok = [~torch.isnan(t).any() if path in buffers else torch.isfinite(t).all()
          for path, t in checked]
    flags = torch.stack([flag.cpu() for flag in ok])
    if bool(flags.all()):
        return []
    return [path for (path, _), good in zip(checked, flags.tolist())
            if not good]


@HOOKS.register_module()
class FiniteCheckHook(Hook):
    """Stop training when a loss or a parameter stops being finite.

    A diverged run (too high a learning rate, a zero ``std`` in the data
    preprocessor) otherwise trains on to the end with NaN weights, exits 0
    and overwrites its good checkpoints with NaN ones. This hook checks the
    loss terms of every iteration (one host sync, after the loggers) and
    every tensor of a checkpoint before it is written, and raises
    ``FloatingPointError`` naming the iteration and the non-finite terms;
    no checkpoint is written after the fault, so the last one stays good.

    Infinite *gradients* are not checked: under fp16 mixed precision with a
    dynamic loss scale they are expected, and the scaler skips that step.

    Args:
        max_names (int): At most this many tensor names in the message.
    """

    priority = 'LOW'  # after LoggerHook, before CheckpointHook

    def __init__(self, max_names: int = 8) -> None:
        self.max_names = max_names

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[Dict] = None) -> None:
        """Raise if a loss term of this iteration is NaN or infinite.

        Raises:
            FloatingPointError: Names the iteration (1-based, as logged) and
                the non-finite loss terms with their values.
        """
        bad = non_finite_losses(outputs or {})
        if bad:
            terms = ', '.join(f'{k}={v}' for k, v in bad)
            raise FloatingPointError(
                f'Non-finite loss at iteration {runner.iter + 1}: {terms}. '
                f'Training stopped; {self._last_checkpoint(runner)}')

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        """Refuse to write a checkpoint with NaN or infinite tensors.

        Raises:
            FloatingPointError: Names the iteration and the tensors.
        """
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        bad = non_finite_tensors(
            checkpoint, [name for name, _ in model.named_buffers()])
        if bad:
            shown = ', '.join(bad[:self.max_names])
            more = (f' and {len(bad) - self.max_names} more'
                    if len(bad) > self.max_names else '')
            step = checkpoint.get('meta', {}).get('iter', runner.iter)
            raise FloatingPointError(
                f'Non-finite values at iteration {step}: {len(bad)} '
                f'tensors, {shown}{more}. Not saving this checkpoint; '
                f'{self._last_checkpoint(runner)}')

    @staticmethod
    def _last_checkpoint(runner) -> str:
        record = osp.join(runner.work_dir, 'last_checkpoint')
        last = ''
        if osp.isfile(record):
            with open(record) as f:
                last = f.read().strip()
        return (f'the last checkpoint is {last}.'
                if last else 'no checkpoint was written.')
