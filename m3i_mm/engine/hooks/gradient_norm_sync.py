"""Average λ's measurement over ranks before a checkpoint can be written."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from m3i_mm.models.utils import GradientNormBalancer
from m3i_mm.registry import HOOKS


@HOOKS.register_module()
class GradientNormSyncHook(Hook):
    """Call :meth:`GradientNormBalancer.reduce_pending` after every iteration.

    The gradient norms a step measured are folded into λ by the next step.
    The checkpoint of an iteration is written by rank 0 alone, after the
    backward and before that fold, so without this hook it would hold rank
    0's measurement instead of the mean of all ranks, and a resumed
    multi-rank run would continue with another λ. Runs before mmengine's
    ``CheckpointHook`` (priority ``VERY_LOW``); a no-op for models without
    a balancer and in one process (where :meth:`step` reduces anyway).
    """

    priority = 'NORMAL'

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        for module in model.modules():
            if isinstance(module, GradientNormBalancer):
                module.reduce_pending()
