from .checkpoint import DurableCheckpointHook
from .finite_check_hook import FiniteCheckHook
from .gradient_norm_sync import GradientNormSyncHook
from .monitors import M3IMonitorHook
from .preemption import PREEMPTED_EXIT_CODE, PreemptionHook
from .randomness import ResumableRandomnessHook, SeededSampler

__all__ = [
    'DurableCheckpointHook', 'FiniteCheckHook', 'GradientNormSyncHook',
    'M3IMonitorHook', 'PREEMPTED_EXIT_CODE', 'PreemptionHook',
    'ResumableRandomnessHook', 'SeededSampler'
]
