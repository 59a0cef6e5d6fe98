"""Checkpoints as an engine feature: safe parsing, durable writes, resume."""
from .loader import (TRUST_ENV, load_checkpoint_file,
                     register_checkpoint_schemes)
from .parser import (NotACheckpointError, UnsafeCheckpointError, check_archive,
                     parse_checkpoint)
from .plain import PlainCheckpointHook, from_plain, to_plain

register_checkpoint_schemes()

__all__ = [
    'NotACheckpointError', 'PlainCheckpointHook', 'TRUST_ENV',
    'UnsafeCheckpointError', 'check_archive', 'from_plain', 'load_checkpoint_file',
    'parse_checkpoint', 'register_checkpoint_schemes', 'to_plain'
]
