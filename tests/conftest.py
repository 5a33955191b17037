"""flashtune is imported before any test module imports MLX: it loads the optimized CPU BLAS first."""

import flashtune  # noqa: F401
