from .checkpoint import DurableCheckpointHook
from .finite_check_hook import FiniteCheckHook
from .gradient_norm_sync import GradientNormSyncHook
from .preemption import PREEMPTED_EXIT_CODE, PreemptionHook
from .randomness import ResumableRandomnessHook, SeededSampler

__all__ = [
    'DurableCheckpointHook', 'FiniteCheckHook', 'GradientNormSyncHook',
    'PREEMPTED_EXIT_CODE', 'PreemptionHook', 'ResumableRandomnessHook',
    'SeededSampler'
]
