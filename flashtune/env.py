"""What a result was measured on: versions, git sha, device, BLAS. Goes into every run_info header."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import mlx.core as mx

from flashtune import __version__, cpu_blas


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    """The checkout's commit (with '+dirty' when files changed), or None outside git.

    FLASHTUNE_GIT_SHA, when set, wins: a copy shipped to another machine may carry a stale .git
    (a working tree copied to a GPU machine carried a .git that named an older commit, '+dirty').
    """
    if os.environ.get("FLASHTUNE_GIT_SHA"):
        return os.environ["FLASHTUNE_GIT_SHA"]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def backend() -> str:
    """'cuda', 'metal' or 'cpu': where MLX runs by default (and where kernels would run)."""
    if mx.default_device() != mx.gpu:
        return "cpu"
    if mx.cuda.is_available():
        return "cuda"
    if mx.metal.is_available():
        return "metal"
    return "cpu"


def device_name() -> str:
    """The chip or GPU name MLX reports (e.g. 'NVIDIA H100 80GB HBM3', 'Apple M3 Max')."""
    try:
        info = mx.device_info()
        return str(info.get("device_name") or info.get("architecture") or platform.processor())
    except Exception:  # older MLX or no device info on this backend
        return platform.processor() or platform.machine()


def short_device_tag() -> str:
    """A filesystem-safe device tag for result folders, e.g. 'nvidia-h100-80gb-hbm3-cuda'."""
    name = "".join(c if c.isalnum() else "-" for c in device_name().lower())
    return "-".join(filter(None, name.split("-")))[:40] + f"-{backend()}"


def run_info(config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The header record of a results file.

    Args:
        config: the full resolved configuration of the run.
        extra: more fields (dtype, seed, notes...).

    Returns:
        A JSON-serializable dict with ``"run_info": True``.
    """
    return {
        "run_info": True,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "flashtune": __version__,
        "mlx": _version("mlx") or mx.__version__,
        "mlx_lm": _version("mlx-lm"),
        "git_sha": git_sha(),
        "device": {"name": device_name(), "backend": backend(), "platform": platform.platform()},
        "blas": cpu_blas.describe() if backend() == "cpu" else None,
        "python": platform.python_version(),
        "config": config or {},
        **extra,
    }


def report() -> str:
    """Multi-line human summary for ``flashtune env`` / ``--version``."""
    info = run_info()
    lines = [
        f"flashtune {info['flashtune']} (git {info['git_sha']})",
        f"mlx {info['mlx']}, mlx-lm {info['mlx_lm']}, python {info['python']}",
        f"device: {info['device']['name']} ({info['device']['backend']})",
        f"CPU BLAS: {cpu_blas.describe()}",
    ]
    return "\n".join(lines)
