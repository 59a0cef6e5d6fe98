"""Checkpoints as an engine feature: safe parsing, durable writes, resume."""
from .durable import (DurableLocalBackend,  # noqa: F401
                      remove_stale_temp_files)
from .resume import find_resumable_checkpoint  # noqa: F401
