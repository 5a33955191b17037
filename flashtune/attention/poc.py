"""Hand-written flash-attention kernels (CUDA via mx.fast.cuda_kernel, Metal via mx.fast.metal_kernel).

Until a kernel backend is available on this device, ``poc`` says so once and runs ``practical``.
The path that ran is recorded in ``poc.last_path`` so benchmarks and tests can see the routing.
"""

import mlx.core as mx

from flashtune.attention import register
from flashtune.attention.practical import practical
from flashtune.log import say_once


@register("poc")
def poc(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask=None) -> mx.array:
    """Flash-attention kernels where available, else ``practical`` (see module docstring).

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D).
        scale: multiplier of q kᵀ.
        mask: None, "causal", a bool (keep) or an additive array.

    Returns:
        (B, Hq, Lq, D) in q's dtype.
    """
    say_once(
        "poc-no-backend",
        f"poc: no flash-attention kernel backend on {mx.default_device()}; running 'practical'",
    )
    poc.last_path = "practical"
    return practical(q, k, v, scale=scale, mask=mask)


poc.last_path = None
