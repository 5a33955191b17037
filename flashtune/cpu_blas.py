"""Load an optimized BLAS for MLX's CPU backend on Linux, before mlx is imported.

The Linux mlx-cpu wheel links the reference (netlib) BLAS: a 1024² float32 matmul runs at
~7.5 GFLOP/s on the development machine, ~230 with OpenBLAS. Loading libopenblas with
RTLD_GLOBAL before mlx's own library binds its cblas_* symbols to OpenBLAS instead.
Set FLASHTUNE_BLAS=/path/to/libopenblas.so.0 to choose a library, or FLASHTUNE_BLAS=none to skip.
"""

import ctypes
import ctypes.util
import os
import sys

# Debian/Ubuntu's libopenblas0-pthread, then the alternatives link, then the loader's search.
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
HOW_TO_GET_ONE = (
    "MLX's CPU backend is using the reference BLAS (~30x slower matmuls). Install OpenBLAS: "
    "`sudo apt-get install libopenblas0-pthread` (Debian/Ubuntu) or `make install`, "
    "or point FLASHTUNE_BLAS at a libopenblas.so.0."
)

loaded: str | None = None  # the path that was loaded, or None
reason: str = "not attempted"


def _find() -> str | None:
    chosen = os.environ.get("FLASHTUNE_BLAS")
    if chosen:
        return None if chosen.lower() == "none" else chosen
    for path in _CANDIDATES:
        if os.path.exists(path):
            return path
    return ctypes.util.find_library("openblas")


def load() -> str | None:
    """Loads OpenBLAS globally if found (Linux only; macOS uses Accelerate/Metal).

    Returns:
        The loaded library's path, or None (``reason`` then says why).
    """
    global loaded, reason
    if not sys.platform.startswith("linux"):
        reason = f"not needed on {sys.platform}"
        return None
    if "mlx.core" in sys.modules:
        reason = "mlx was imported before flashtune; import flashtune first"
        return None
    path = _find()
    if path is None:
        reason = "no OpenBLAS found"
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as error:
        reason = f"could not load {path}: {error}"
        return None
    loaded, reason = path, "loaded"
    return path


def describe() -> str:
    """One line for version/env reports."""
    return f"OpenBLAS {loaded}" if loaded else f"reference BLAS ({reason})"
