from .config import (CfgOptionsAction, check_option_values,
                     known_top_level_keys, misspelt_top_level_keys,
                     shorten_iter_schedule, warn_misspelt_keys)

__all__ = [
    'CfgOptionsAction', 'check_option_values', 'known_top_level_keys',
    'misspelt_top_level_keys', 'shorten_iter_schedule', 'warn_misspelt_keys'
]
