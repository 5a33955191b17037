"""Compiles generated translation units with the system C++ compiler, once per source and flags.

The scheduler (runtime.cpp) is compiled once into its own library, loaded with its symbols
global, and each kernel's library resolves against it: a kernel then compiles in about a
second. Libraries are cached on disk under a hash of the source, the flags, the compiler's
version and the emulator's own files, so each kernel variant compiles once per machine while
the cache lasts.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from flashtune.errors import EmulationError

HEADER_DIR = Path(__file__).resolve().parent
FILES = ("metal_shim.h", "runtime.h", "memory.h", "float16.h", "runtime.cpp")
# No -ffast-math: MLX compiles custom kernels in Metal's safe math mode, where infinities and
# NaN behave as IEEE 754 says, and the kernels rely on exp2(-inf) == 0.
FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-fno-fast-math")
# Kernel libraries leave the runtime's symbols to be found at load time.
KERNEL_FLAGS = ("-undefined", "dynamic_lookup") if sys.platform == "darwin" else ()
CACHE_ENV = "FLASHTUNE_METAL_EMULATOR_CACHE"

_loaded: dict[str, ctypes.CDLL] = {}


def compiler() -> str:
    """The C++ compiler: $CXX, else c++, g++ or clang++ on PATH.

    Raises:
        EmulationError: none is installed.
    """
    candidates = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    for name in filter(None, candidates):
        path = shutil.which(name)
        if path:
            return path
    raise EmulationError("the Metal emulator needs a C++20 compiler (c++, g++ or clang++); none found")


@functools.cache
def _identity(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    files = "".join((HEADER_DIR / name).read_text() for name in FILES)
    return f"{cxx}\n{version.stdout}\n{files}"


def cache_dir() -> Path:
    """$FLASHTUNE_METAL_EMULATOR_CACHE, else a per-user folder in the temp directory."""
    default = Path(tempfile.gettempdir()) / f"flashtune-metal-emulator-{os.getuid()}"
    path = Path(os.environ.get(CACHE_ENV) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build(cxx: str, source: str, flags: tuple[str, ...], target: Path, name: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
    try:
        cpp = work / f"{name}.cpp"
        cpp.write_text(source)
        command = [cxx, *flags, f"-I{HEADER_DIR}", str(cpp), "-o", str(work / "lib.so")]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise EmulationError(f"{name}: the C++ compiler rejected the emulated kernel:\n{result.stderr[-6000:]}")
        os.replace(work / "lib.so", target)  # atomic: parallel test processes may race here
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _library(source: str, name: str, flags: tuple[str, ...], mode: int) -> ctypes.CDLL:
    cxx = compiler()
    key = hashlib.sha256("\0".join([_identity(cxx), *flags, source]).encode()).hexdigest()[:24]
    if key not in _loaded:
        target = cache_dir() / f"{name}-{key}.so"
        if not target.exists():
            _build(cxx, source, flags, target, name)
        _loaded[key] = ctypes.CDLL(str(target), mode=mode)
    return _loaded[key]


def load(source: str, name: str) -> ctypes.CDLL:
    """The compiled library of one kernel's translation unit (compiled on first use, then cached).

    Args:
        source: the translation unit (source.translation_unit).
        name: the kernel's name, for messages and file names.

    Raises:
        EmulationError: no compiler, or the compiler rejects the source (its messages cite
            the kernel's own line numbers).
    """
    runtime = (HEADER_DIR / "runtime.cpp").read_text()
    _library(runtime, "mtlemu-runtime", FLAGS, ctypes.RTLD_GLOBAL)
    return _library(source, name, FLAGS + KERNEL_FLAGS, ctypes.DEFAULT_MODE)
