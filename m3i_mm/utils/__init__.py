from .config import (known_top_level_keys, misspelt_top_level_keys,
                     shorten_iter_schedule, warn_misspelt_keys)

__all__ = [
    'known_top_level_keys', 'misspelt_top_level_keys', 'shorten_iter_schedule',
    'warn_misspelt_keys'
]
