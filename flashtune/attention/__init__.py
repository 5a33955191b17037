"""Registry of attention implementations, keyed by the names the CLI and YAML use.

Every implementation has the signature ``fn(q, k, v, *, scale, mask=None, segments=None) -> out``
described in ``flashtune.attention.contract`` (``segments``: int32 (B, L) document ids of packed
sequences). Nothing is chosen at import time: callers ask by name.
"""

import sys
from collections.abc import Callable

AttentionFn = Callable[..., "mx.array"]  # noqa: F821 (mx is only named for readers)

_REGISTRY: dict[str, AttentionFn] = {}


def register(name: str) -> Callable[[AttentionFn], AttentionFn]:
    """Decorator that adds an attention function to the registry under ``name``.

    Args:
        name: lowercase, unique key (also the file name and the CLI value).

    Returns:
        The decorator; it returns the function unchanged.
    """
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"attention name {name!r} must be a lowercase identifier")

    def decorator(fn: AttentionFn) -> AttentionFn:
        if name in _REGISTRY:
            raise ValueError(f"attention {name!r} is already registered")
        fn.attention_name = name
        _REGISTRY[name] = fn
        return fn

    return decorator


def names() -> list[str]:
    """Returns the registered attention names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> AttentionFn:
    """Returns the attention function registered under ``name``.

    Raises:
        KeyError: naming the unknown value and listing the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown attention {name!r}; valid names: {', '.join(names())}") from None


def describe(name: str) -> dict[str, str]:
    """What an implementation is and which path it takes on this machine (``flashtune attention``).

    Returns:
        ``{"name", "what", "here"}``: the first line of its module's docstring, and what its
        module's ``runs_here()`` says about the current backend.
    """
    module = sys.modules[get(name).__module__]
    what = (module.__doc__ or "").strip().splitlines()[0].replace("``", "")
    return {"name": name, "what": what, "here": module.runs_here()}


def check_name(name: str) -> str:
    """Validates ``name`` without running anything (used by CLIs before expensive work)."""
    get(name)
    return name


# Importing the implementations registers them; order here is the order of names().
# isort: off
from flashtune.attention import baseline, practical, demo, poc  # noqa: E402,F401
# isort: on
