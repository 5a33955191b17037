"""flashtune: LoRA fine-tuning on MLX with pluggable attention."""

# Before anything imports mlx: MLX's Linux CPU wheel otherwise binds the reference BLAS.
from flashtune import cpu_blas

cpu_blas.load()

__version__ = "0.1.0"

from flashtune.patch import packed, patch, patched, unpatch  # noqa: E402

__all__ = ["__version__", "packed", "patch", "patched", "unpatch"]
