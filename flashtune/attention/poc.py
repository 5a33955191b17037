"""Hand-written flash-attention kernels (CUDA via mx.fast.cuda_kernel, Metal via mx.fast.metal_kernel).

Routing, per call (``poc.last_path`` names the path that ran; each route is logged once):
- CUDA or Metal GPU, mask None or "causal", bf16/fp16, head dim in the kernels' list: the
  kernels (forward saves the log-sum-exp; backward recomputes tiles from it), wrapped in
  ``mx.custom_function`` so ``mx.grad`` trains through them.
- Every kernel variant (backend, dtype, head dim, causal) first checks itself against
  ``practical`` on a small random problem, output and gradients. If it fails to compile or
  to match, ``poc`` warns once with the reason and uses the fallback for that variant. A
  kernel that is wrong is never used silently; Metal code, which no machine of this project
  can run, depends on this.
- Array masks, float32 or other head dims: ``practical`` (O(L) memory, correct everywhere).
- CPU: there is no kernel backend; ``poc`` says so once and runs ``practical``.
"""

import functools
import logging
from typing import Dict, Optional, Tuple

import mlx.core as mx

from flashtune.attention import register
from flashtune.attention.contract import conforming
from flashtune.attention.kernels import cuda as cuda_kernels
from flashtune.attention.kernels import metal as metal_kernels
from flashtune.attention.practical import practical
from flashtune.env import backend  # a module attribute, so tests can simulate other backends
from flashtune.log import logger, say_once

KERNELS = {"cuda": cuda_kernels, "metal": metal_kernels}
# practical, not demo, on CUDA too: demo's cuDNN path returned dq = 0 and then an illegal
# memory access for Lq > Lk with an array mask on the H100 (results/poc/run2), and a
# fallback must be right first.
FALLBACKS = {"cuda": practical, "metal": practical, "cpu": practical}
# Relative L2 error allowed in the self-check against float32 ``practical``: bf16 kernels
# land near 4e-3 (outputs) and 1e-2 (gradients); a wrong kernel is off by O(1).
CHECK_TOLERANCE = {mx.bfloat16: 5e-2, mx.float16: 2e-2}
# The self-check problem: GQA, Lq != Lk, lengths that cross several partial tiles.
CHECK_SHAPE = dict(batch=1, n_kv_heads=2, group=2, L_q=67, L_k=131)

_verdicts: Dict[Tuple, Optional[str]] = {}  # variant -> None (verified) or why it failed


@functools.lru_cache(maxsize=None)
def kernel_function(kind: str, scale: float, causal: bool):
    """The custom function (forward kernel + backward kernels) for one static configuration.

    Returns ``flash(q, k, v) -> (out, lse)``; the kernels module is looked up per call, so
    tests can swap ``KERNELS[kind]``.
    """

    @mx.custom_function
    def flash(q, k, v):
        return KERNELS[kind].forward(q, k, v, scale, causal)

    @flash.vjp
    def flash_vjp(primals, cotangents, outputs):
        q, k, v = primals
        out, lse = outputs
        return KERNELS[kind].backward(q, k, v, out, lse, cotangents[0], scale, causal)

    return flash


def _relative_error(got: mx.array, want: mx.array) -> float:
    got, want = got.astype(mx.float32), want.astype(mx.float32)
    return (mx.linalg.norm(got - want) / mx.maximum(mx.linalg.norm(want), 1e-30)).item()


def self_check(kind: str, dtype: mx.Dtype, head_dim: int, causal: bool) -> Optional[str]:
    """Runs one kernel variant on a small random problem against float32 ``practical``.

    Returns:
        None when output, dq, dk and dv match within ``CHECK_TOLERANCE``, else the reason
        (a compile or launch error, a wrong shape, NaN, or the largest relative error).
    """
    s = CHECK_SHAPE
    n_heads = s["n_kv_heads"] * s["group"]
    keys = mx.random.split(mx.random.key(20261123), 4)  # a private key: global RNG untouched
    q = mx.random.normal((s["batch"], n_heads, s["L_q"], head_dim), key=keys[0])
    k = mx.random.normal((s["batch"], s["n_kv_heads"], s["L_k"], head_dim), key=keys[1])
    v = mx.random.normal(k.shape, key=keys[2])
    cot = mx.random.normal(q.shape, key=keys[3])
    q, k, v, cot = (x.astype(dtype) for x in (q, k, v, cot))
    scale = head_dim**-0.5
    mask = "causal" if causal else None
    flash = kernel_function(kind, scale, causal)
    try:
        (out,), grads = mx.vjp(lambda *a: flash(*a)[0], [q, k, v], [cot])
        mx.eval(out, grads)
    except Exception as error:  # noqa: BLE001 (any compile or launch failure means "unusable")
        return f"{type(error).__name__}: {error}".strip()[:600]
    (want,), want_grads = mx.vjp(
        lambda *a: practical(*a, scale=scale, mask=mask),
        [x.astype(mx.float32) for x in (q, k, v)],
        [cot.astype(mx.float32)],
    )
    worst = (0.0, "")
    for name, got, ref in zip(("out", "dq", "dk", "dv"), [out, *grads], [want, *want_grads]):
        if got.shape != ref.shape or got.dtype != dtype:
            return f"{name} has shape {got.shape} {got.dtype}, expected {ref.shape} {dtype}"
        error = _relative_error(got, ref)
        if not error <= CHECK_TOLERANCE[dtype]:  # also catches NaN
            return f"{name} relative error {error:.3g} > {CHECK_TOLERANCE[dtype]:g}"
        worst = max(worst, (error, name))
    logger.debug("poc: %s kernel %s D=%d causal=%s verified (worst %s %.2e)",
                 kind, dtype, head_dim, causal, worst[1], worst[0])
    return None


def verdict(kind: str, dtype: mx.Dtype, head_dim: int, causal: bool) -> Optional[str]:
    """Cached ``self_check``: None when the variant may run, else why not."""
    variant = (kind, dtype, head_dim, causal)
    if variant not in _verdicts:
        _verdicts[variant] = self_check(kind, dtype, head_dim, causal)
    return _verdicts[variant]


def reset() -> None:
    """Forgets self-check verdicts (tests; or after changing kernels at run time)."""
    _verdicts.clear()


def _route(q: mx.array, k: mx.array, mask) -> Tuple[str, str]:
    """Returns (path, why): path is a backend name or a fallback implementation's name."""
    kind = backend()
    if kind == "cpu":
        return "practical", f"no flash-attention kernel backend on {mx.default_device()}"
    fallback = FALLBACKS[kind].attention_name
    if isinstance(mask, mx.array):
        return fallback, "array masks are not handled by the kernels"
    if not KERNELS[kind].supports(q, k):
        return fallback, (
            f"the {kind} kernels take {'/'.join(str(d) for d in KERNELS[kind].DTYPES)} with "
            f"head dim in {KERNELS[kind].HEAD_DIMS}; got {q.dtype}, head dim {q.shape[-1]}"
        )
    reason = verdict(kind, q.dtype, q.shape[-1], isinstance(mask, str))
    if reason is not None:
        return fallback, f"the {kind} kernel failed its self-check ({reason})"
    return kind, ""


@register("poc")
@conforming
def poc(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask=None) -> mx.array:
    """Flash-attention kernels where available and verified, else a fallback (module docstring).

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D).
        scale: multiplier of q kᵀ.
        mask: None, "causal", a bool (keep) or an additive array.

    Returns:
        (B, Hq, Lq, D) in q's dtype.
    """
    path, why = _route(q, k, mask)
    poc.last_path = path
    if path in KERNELS:
        return kernel_function(path, float(scale), isinstance(mask, str))(q, k, v)[0]
    # A failed self-check or a missing backend is news; a routed mask or dtype is expected.
    noteworthy = "self-check" in why or "no flash-attention kernel backend" in why
    say_once(
        f"poc-route-{path}-{why}",
        f"poc: {why}; running '{path}'",
        logging.WARNING if noteworthy else logging.INFO,
    )
    return practical(q, k, v, scale=scale, mask=mask)


poc.last_path = None
