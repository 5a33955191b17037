"""CPU emulation of the Metal subset poc's kernels use, so they run (and are checked) without a Mac.

``run(launch)`` is a drop-in for ``metal.run_on_gpu``; ``execute`` also returns what the grid
did; ``kernels()`` is the ``metal`` kernels module with every launch emulated. What it checks
and what it cannot: docs/metal-emulator.md.
"""

import functools
import types

from flashtune.attention.kernels import metal
from flashtune.attention.kernels.metal_emulator.runner import Execution, Stats, execute, run
from flashtune.errors import EmulationError

__all__ = ["EmulationError", "Execution", "Stats", "execute", "kernels", "run"]


def kernels(checked: bool = True) -> types.SimpleNamespace:
    """The interface poc takes from ``metal`` (forward, backward, supports, DTYPES, HEAD_DIMS,
    SEGMENTS), with each launch run by the emulator.

    Args:
        checked: bounds-checked buffers and race-checked threadgroup memory.
    """
    emulate = functools.partial(run, checked=checked)
    return types.SimpleNamespace(
        forward=functools.partial(metal.forward, run=emulate),
        backward=functools.partial(metal.backward, run=emulate),
        supports=metal.supports,
        DTYPES=metal.DTYPES,
        HEAD_DIMS=metal.HEAD_DIMS,
        SEGMENTS=metal.SEGMENTS,
    )
