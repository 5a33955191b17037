"""Errors raised before any training starts, each naming the bad value and the choices."""


class UnknownModelError(ValueError):
    """The model name is neither an alias, an existing path nor a plausible Hub repo id."""


class ModelNotAvailableError(FileNotFoundError):
    """The model exists in principle but cannot be had here (not cached, Hub unreachable, no wheel)."""
