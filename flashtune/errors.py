"""Recognizing failures that have a user-facing meaning, from an exception or a log's text."""

from typing import Union

# What MLX (CUDA, Metal, CPU) and Python print when an allocation fails.
_OOM_MARKERS = ("out of memory", "outofmemory", "malloc", "allocat", "memory limit")


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (the message says what to do)."""


def is_out_of_memory(error: Union[BaseException, str]) -> bool:
    """True when ``error`` (an exception or captured output) reports a failed allocation."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(marker in text for marker in _OOM_MARKERS)
