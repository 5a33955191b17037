"""Runs a Metal kernel launch on the CPU: marshals MLX arrays into the compiled emulator and back."""

import ctypes
import threading
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from flashtune.attention.kernels.metal_emulator import compiler, source
from flashtune.errors import EmulationError

_STORAGE = {mx.float16: mx.uint16, mx.bfloat16: mx.uint16}  # numpy has no bfloat16
_NUMPY = {
    mx.bool_: np.bool_,
    mx.uint8: np.uint8,
    mx.uint16: np.uint16,
    mx.uint32: np.uint32,
    mx.uint64: np.uint64,
    mx.int8: np.int8,
    mx.int16: np.int16,
    mx.int32: np.int32,
    mx.int64: np.int64,
    mx.float16: np.uint16,
    mx.bfloat16: np.uint16,
    mx.float32: np.float32,
}
ERROR_BYTES = 8192
# The runtime keeps the running thread in process globals, and ctypes releases the GIL.
_ONE_GRID_AT_A_TIME = threading.Lock()


class _Stats(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64) for name in ("threadgroups", "threads", "barriers", "simd_ops", "threadgroup_bytes")
    ]


@dataclass(frozen=True)
class Stats:
    """What the grid did: threadgroups and threads run, barriers passed (each counted once per
    threadgroup), SIMD-group functions resolved (once per simdgroup), and the most
    threadgroup memory one threadgroup declared (bytes)."""

    threadgroups: int
    threads: int
    barriers: int
    simd_ops: int
    threadgroup_bytes: int


@dataclass(frozen=True)
class Execution:
    """A launch's outputs and what its grid did."""

    outputs: list[mx.array]
    stats: Stats


def _to_numpy(x: mx.array) -> np.ndarray:
    storage = _STORAGE.get(x.dtype)
    return np.ascontiguousarray(np.array(x.view(storage) if storage else x))


def _poisoned(shape, dtype: mx.Dtype) -> np.ndarray:
    """An output buffer as MLX allocates it (not cleared): all bits set (NaN for floats)."""
    storage = np.dtype(_NUMPY[dtype])
    size = int(np.prod(shape, dtype=np.int64))
    return np.full(size * storage.itemsize, 0xFF, dtype=np.uint8).view(storage)


def _from_numpy(buffer: np.ndarray, shape, dtype: mx.Dtype) -> mx.array:
    out = mx.array(buffer).reshape(shape)
    return out.view(dtype) if dtype in _STORAGE else out


def _launch(library, launch, buffers, shapes, strides, stats, error) -> int:
    """Calls the library's mtlemu_launch (the signature source.translation_unit writes)."""
    n = len(buffers)
    return library.mtlemu_launch(
        (ctypes.c_void_p * n)(*[b.ctypes.data for b in buffers]),
        (ctypes.c_uint64 * n)(*[b.size for b in buffers]),
        (ctypes.c_void_p * len(shapes))(*[s.ctypes.data for s in shapes]),
        (ctypes.c_void_p * len(strides))(*[s.ctypes.data for s in strides]),
        (ctypes.c_int32 * len(shapes))(*[x.ndim for x in launch.inputs]),
        (ctypes.c_uint32 * 3)(*launch.grid),
        (ctypes.c_uint32 * 3)(*launch.threadgroup),
        ctypes.byref(stats),
        error,
        ctypes.c_size_t(ERROR_BYTES),
    )


def execute(launch, checked: bool = True) -> Execution:
    """Compiles (once) and runs one launch on the CPU.

    Args:
        launch: a ``metal.Launch``.
        checked: bounds-checked buffers and race-checked threadgroup memory.

    Returns:
        The outputs (as mx.fast.metal_kernel returns them) and the grid's Stats.

    Raises:
        EmulationError: the kernel does not compile, or breaks a rule while it runs; the
            message names the kernel, the threadgroup and thread, and the rule.
    """
    name = launch.kernel.name
    if len(launch.inputs) != len(launch.kernel.input_names):
        raise EmulationError(f"{name}: {len(launch.inputs)} inputs for {launch.kernel.input_names}")
    library = compiler.load(source.translation_unit(launch, checked), name)
    inputs = [_to_numpy(x) for x in launch.inputs]
    outputs = [_poisoned(s, d) for s, d in zip(launch.output_shapes, launch.output_dtypes)]
    buffers = inputs + outputs
    shapes = [np.array(x.shape, dtype=np.int32) for x in launch.inputs]
    strides = [np.array([s // a.itemsize for s in a.strides], dtype=np.int64) for a in inputs]
    stats = _Stats()
    error = ctypes.create_string_buffer(ERROR_BYTES)
    with _ONE_GRID_AT_A_TIME:
        status = _launch(library, launch, buffers, shapes, strides, stats, error)
    if status != 0:
        raise EmulationError(f"{name}: {error.value.decode(errors='replace')}")
    results = [_from_numpy(b, s, d) for b, s, d in zip(outputs, launch.output_shapes, launch.output_dtypes)]
    return Execution(results, Stats(*(getattr(stats, f) for f, _ in _Stats._fields_)))


def run(launch, checked: bool = True) -> list[mx.array]:
    """``execute``'s outputs only: a drop-in for ``metal.run_on_gpu``."""
    return execute(launch, checked).outputs
