from .randomness import ResumableRandomnessHook, SeededSampler

__all__ = ['ResumableRandomnessHook', 'SeededSampler']
