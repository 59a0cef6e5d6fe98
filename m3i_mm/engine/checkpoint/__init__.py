"""Checkpoints as an engine feature: safe parsing, durable writes, resume."""
