"""Every error type flashtune raises on purpose, and recognizing out-of-memory failures.

Errors raised before any work starts name the bad value and the valid choices; the CLI prints
them as one message (``FLASHTUNE_DEBUG=1`` shows the traceback).
"""

# What MLX (CUDA, Metal, CPU) and Python print when an allocation fails.
_OOM_MARKERS = ("out of memory", "outofmemory", "malloc", "allocat", "memory limit")


class ConfigError(ValueError):
    """A bad recipe file or setting."""


class DataFormatError(ValueError):
    """A dataset line is not what its format requires; the message names file and line."""


class SequenceTooLongError(ValueError):
    """An example is longer than max_seq_length and truncation was not asked for."""


class UnknownModelError(ValueError):
    """The model name is neither an alias, an existing path nor a plausible Hub repo id."""


class ModelNotAvailableError(FileNotFoundError):
    """The model exists in principle but cannot be had here (not cached, Hub unreachable, no wheel)."""


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (the message says what to do)."""


class EmulationError(RuntimeError):
    """A Metal kernel failed under the CPU emulator (it does not compile, breaks a Metal rule, or
    reads or writes out of bounds); the message names the kernel and what went wrong."""


class BudgetExceeded(Exception):
    """A benchmark run was stopped at its call's time budget; it is left for the next call."""


def is_out_of_memory(error: BaseException | str) -> bool:
    """True when ``error`` (an exception or captured output) reports a failed allocation."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(marker in text for marker in _OOM_MARKERS)
