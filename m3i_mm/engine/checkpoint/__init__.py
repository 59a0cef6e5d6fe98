"""Checkpoints as an engine feature: safe parsing, durable writes, resume."""
from .durable import DurableLocalBackend, remove_stale_temp_files
from .loader import (TRUST_ENV, load_checkpoint_file,
                     register_checkpoint_schemes)
from .parser import (NotACheckpointError, UnsafeCheckpointError, check_archive,
                     parse_checkpoint)
from .plain import PlainCheckpointHook, from_plain, to_plain
from .resume import (NoIntactCheckpointError, checkpoint_damage,
                     find_resumable_checkpoint)

register_checkpoint_schemes()

__all__ = [
    'DurableLocalBackend', 'NoIntactCheckpointError', 'NotACheckpointError',
    'PlainCheckpointHook', 'TRUST_ENV', 'UnsafeCheckpointError',
    'check_archive', 'checkpoint_damage', 'find_resumable_checkpoint',
    'from_plain', 'load_checkpoint_file', 'parse_checkpoint',
    'register_checkpoint_schemes',
    'remove_stale_temp_files', 'to_plain'
]
