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
- Packed sequences (``segments``): the kernels when their module says it takes them
  (``SEGMENTS = True``) and their segments variant passes its own self-check (several
  documents, one of length 1, trailing padding); else ``practical``, said once with the reason.
- CPU: there is no kernel backend; ``poc`` says so once and runs ``practical``.

A kernels module provides ``forward(q, k, v, scale, causal, segments=None) -> (out, lse)``,
``backward(q, k, v, out, lse, d_out, scale, causal, segments=None) -> (dq, dk, dv)``,
``supports(q, k)``, ``DTYPES``, ``HEAD_DIMS`` and ``SEGMENTS`` (bool; missing means False).
``segments`` is passed only when given, so a module without it still runs unpacked rows.
"""

import functools
import logging

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
# memory access for Lq > Lk with an array mask on an H100 (`python scripts/poc_gpu_check.py`),
# and a fallback must be right first.
FALLBACKS = {"cuda": practical, "metal": practical, "cpu": practical}
# Relative L2 error allowed in the self-check against float32 ``practical``: bf16 kernels
# land near 4e-3 (outputs) and 1e-2 (gradients); a wrong kernel is off by O(1).
CHECK_TOLERANCE = {mx.bfloat16: 5e-2, mx.float16: 2e-2}
# The self-check problem: GQA, Lq != Lk, lengths that cross several partial tiles.
CHECK_SHAPE = dict(batch=1, n_kv_heads=2, group=2, L_q=67, L_k=131)
# The segments variant's ids (L 67 = CHECK_SHAPE's L_q, self-attention): documents of 20, 1,
# 33 and 7 tokens then padding, and a row of one document then padding with another negative
# id, so a kernel that mixes up batch rows or only knows -1 as padding fails.
CHECK_SEGMENTS = (
    (0,) * 20 + (1,) + (2,) * 33 + (3,) * 7 + (-1,) * 6,
    (9,) * 45 + (-3,) * 22,
)

_verdicts: dict[tuple, str | None] = {}  # variant -> None (verified) or why it failed


@functools.cache
def kernel_function(kind: str, scale: float, causal: bool, segments: bool = False):
    """The custom function (forward kernel + backward kernels) for one static configuration.

    Returns ``flash(q, k, v) -> (out, lse)``, or with ``segments`` ``flash(q, k, v, ids)``
    (the ids are an input of the function, with a zero cotangent); the kernels module is
    looked up per call, so tests can swap ``KERNELS[kind]``.
    """
    if segments:
        return _kernel_function_with_segments(kind, scale, causal)

    @mx.custom_function
    def flash(q, k, v):
        return KERNELS[kind].forward(q, k, v, scale, causal)

    @flash.vjp
    def flash_vjp(primals, cotangents, outputs):
        q, k, v = primals
        out, lse = outputs
        return KERNELS[kind].backward(q, k, v, out, lse, cotangents[0], scale, causal)

    return flash


def _kernel_function_with_segments(kind: str, scale: float, causal: bool):
    @mx.custom_function
    def flash(q, k, v, ids):
        return KERNELS[kind].forward(q, k, v, scale, causal, segments=ids)

    @flash.vjp
    def flash_vjp(primals, cotangents, outputs):
        q, k, v, ids = primals
        out, lse = outputs
        grads = KERNELS[kind].backward(q, k, v, out, lse, cotangents[0], scale, causal, segments=ids)
        return (*grads, mx.zeros_like(ids))

    return flash


def takes_segments(kind: str) -> bool:
    """Whether the ``kind`` kernels module says its kernels take segments."""
    return bool(getattr(KERNELS[kind], "SEGMENTS", False))


def _relative_error(got: mx.array, want: mx.array) -> float:
    got, want = got.astype(mx.float32), want.astype(mx.float32)
    return (mx.linalg.norm(got - want) / mx.maximum(mx.linalg.norm(want), 1e-30)).item()


def _check_problem(dtype: mx.Dtype, head_dim: int, segments: bool):
    """q, k, v, the cotangent (in ``dtype``) and the ids (or None) of the self-check."""
    s = CHECK_SHAPE
    n_heads = s["n_kv_heads"] * s["group"]
    batch, L_k = (len(CHECK_SEGMENTS), s["L_q"]) if segments else (s["batch"], s["L_k"])
    keys = mx.random.split(mx.random.key(20261123), 4)  # a private key: global RNG untouched
    q = mx.random.normal((batch, n_heads, s["L_q"], head_dim), key=keys[0])
    k = mx.random.normal((batch, s["n_kv_heads"], L_k, head_dim), key=keys[1])
    v = mx.random.normal(k.shape, key=keys[2])
    cot = mx.random.normal(q.shape, key=keys[3])
    ids = mx.array(CHECK_SEGMENTS, dtype=mx.int32) if segments else None
    return (*(x.astype(dtype) for x in (q, k, v, cot)), ids)


def _padding_not_zero(ids: mx.array, named: dict[str, mx.array]) -> str | None:
    """The first of ``named`` (B, H, L, D) arrays that is not exactly zero on padding slots."""
    padding = (ids < 0)[:, None, :, None]
    for name, x in named.items():
        if mx.any(padding & (x != 0)).item():
            return f"{name} is not zero on padding slots"
    return None


def self_check(kind: str, dtype: mx.Dtype, head_dim: int, causal: bool, segments: bool = False) -> str | None:
    """Runs one kernel variant on a small random problem against float32 ``practical``.

    With ``segments`` the problem is packed (``CHECK_SEGMENTS``), and the output, dq, dk
    and dv must also be exactly zero on padding slots.

    Returns:
        None when output, dq, dk and dv match within ``CHECK_TOLERANCE``, else the reason
        (a compile or launch error, a wrong shape, NaN, or the largest relative error).
    """
    q, k, v, cot, ids = _check_problem(dtype, head_dim, segments)
    scale = head_dim**-0.5
    mask = "causal" if causal else None
    flash = kernel_function(kind, scale, causal, segments)
    extra = [ids] if segments else []
    try:
        (out,), grads = mx.vjp(lambda *a: flash(*a, *extra)[0], [q, k, v], [cot])
        mx.eval(out, grads)
    except Exception as error:
        return f"{type(error).__name__}: {error}".strip()[:600]
    (want,), want_grads = mx.vjp(
        lambda *a: practical(*a, scale=scale, mask=mask, segments=ids),
        [x.astype(mx.float32) for x in (q, k, v)],
        [cot.astype(mx.float32)],
    )
    worst = (0.0, "")
    named = dict(zip(("out", "dq", "dk", "dv"), [out, *grads]))
    for (name, got), ref in zip(named.items(), [want, *want_grads]):
        if got.shape != ref.shape or got.dtype != dtype:
            return f"{name} has shape {got.shape} {got.dtype}, expected {ref.shape} {dtype}"
        error = _relative_error(got, ref)
        if not error <= CHECK_TOLERANCE[dtype]:  # also catches NaN
            return f"{name} relative error {error:.3g} > {CHECK_TOLERANCE[dtype]:g}"
        worst = max(worst, (error, name))
    if segments and (reason := _padding_not_zero(ids, named)):
        return reason
    logger.debug(
        "poc: %s kernel %s D=%d causal=%s segments=%s verified (worst %s %.2e)",
        kind,
        dtype,
        head_dim,
        causal,
        segments,
        worst[1],
        worst[0],
    )
    return None


def verdict(kind: str, dtype: mx.Dtype, head_dim: int, causal: bool, segments: bool = False) -> str | None:
    """Cached ``self_check``: None when the variant may run, else why not."""
    variant = (kind, dtype, head_dim, causal) + (("segments",) if segments else ())
    if variant not in _verdicts:
        _verdicts[variant] = self_check(kind, dtype, head_dim, causal, segments)
    return _verdicts[variant]


def reset() -> None:
    """Forgets self-check verdicts (tests; or after changing kernels at run time)."""
    _verdicts.clear()


def _route(q: mx.array, k: mx.array, mask, segments) -> tuple[str, str]:
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
    packed = segments is not None
    if packed and not takes_segments(kind):
        return fallback, f"the {kind} kernels take no segments (packed sequences)"
    reason = verdict(kind, q.dtype, q.shape[-1], isinstance(mask, str), packed)
    if reason is not None:
        what = "segments self-check" if packed else "self-check"
        return fallback, f"the {kind} kernel failed its {what} ({reason})"
    return kind, ""


def runs_here() -> str:
    """The path this implementation takes on the current backend (``flashtune attention``)."""
    kind = backend()
    if kind == "cpu":
        return "no kernel backend on the CPU: runs practical"
    kernels = KERNELS[kind]
    dims = "/".join(map(str, kernels.HEAD_DIMS))
    flavour = (
        ("wgmma on this Hopper GPU (mma.sync for other head dims)" if cuda_kernels.is_sm90() else "mma.sync")
        if kind == "cuda"
        else "simdgroup"
    )
    packed = "packed rows too" if getattr(kernels, "SEGMENTS", False) else "packed rows go to practical"
    return (
        f"{kind} kernels ({flavour}) for bf16/fp16, head dims {dims}, no mask or causal ({packed}); "
        "each variant checks itself against practical at first use and falls back if it fails"
    )


@register("poc")
@conforming
def poc(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask=None, segments=None) -> mx.array:
    """Flash-attention kernels where available and verified, else a fallback (module docstring).

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D).
        scale: multiplier of q kᵀ.
        mask: None, "causal", a bool (keep) or an additive array.
        segments: None or int32 (B, L) document ids (see contract.py).

    Returns:
        (B, Hq, Lq, D) in q's dtype.
    """
    path, why = _route(q, k, mask, segments)
    poc.last_path = path
    packed = segments is not None
    if path in KERNELS:
        flash = kernel_function(path, float(scale), isinstance(mask, str), packed)
        return flash(q, k, v, *([segments] if packed else []))[0]
    # A failed self-check, a missing backend or kernels without segments is news; a routed
    # mask or dtype is expected.
    noteworthy = any(s in why for s in ("self-check", "no flash-attention kernel backend", "no segments"))
    say_once(
        f"poc-route-{path}-{why}",
        f"poc: {why}; running '{path}'",
        logging.WARNING if noteworthy else logging.INFO,
    )
    if packed:
        return practical(q, k, v, scale=scale, mask=mask, segments=segments)
    return practical(q, k, v, scale=scale, mask=mask)


poc.last_path = None
