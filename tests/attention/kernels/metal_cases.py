"""Inputs, float64 expectations and error checks shared by the tests of the emulated Metal kernels."""

import dataclasses
import functools
import types
import warnings
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention.kernels import metal
from flashtune.attention.kernels import metal_emulator as emulator
from tests.attention import reference

# Relative L2 error vs float64 on the same rounded inputs. Measured under emulation on the
# shape classes below: bf16 <= 2.0e-3, fp16 <= 2.8e-4 (mostly the rounding of the outputs);
# a wrong tile, mask or scale is off by far more.
TOLERANCE = {mx.bfloat16: 6e-3, mx.float16: 1e-3}
LSE_TOLERANCE = 1e-3  # absolute, natural-log units; float32 sums of O(100) terms
VARIANTS = [(D, dtype, causal) for D in metal.HEAD_DIMS for dtype in metal.DTYPES for causal in (True, False)]


def variant_id(D, dtype, causal) -> str:
    return f"D{D}-{'bf16' if dtype == mx.bfloat16 else 'fp16'}-{'causal' if causal else 'nomask'}"


@dataclass(frozen=True)
class Problem:
    """One attention problem: (B, Hq, Hkv, Lq, Lk) with a head dim, dtype and mask."""

    batch: int
    n_heads: int
    n_kv_heads: int
    L_q: int
    L_k: int
    head_dim: int = 64
    dtype: mx.Dtype = mx.bfloat16
    causal: bool = False

    def __str__(self):
        return f"B{self.batch}-H{self.n_heads}/{self.n_kv_heads}-Lq{self.L_q}-Lk{self.L_k}-" + variant_id(
            self.head_dim, self.dtype, self.causal
        )


def inputs(p: Problem, seed: int = 0):
    """q, k, v, d_out in the problem's dtype."""
    rng = np.random.default_rng(seed)
    q_shape = (p.batch, p.n_heads, p.L_q, p.head_dim)
    kv_shape = (p.batch, p.n_kv_heads, p.L_k, p.head_dim)
    return tuple(
        mx.array(rng.normal(size=s).astype(np.float32)).astype(p.dtype) for s in (q_shape, kv_shape, kv_shape, q_shape)
    )


def run(kernels, q, k, v, d_out, scale: float, causal: bool, **options) -> dict[str, mx.array]:
    """Forward then backward of a kernels module (metal's interface); lse in natural log."""
    out, lse = kernels.forward(q, k, v, scale, causal, **options)
    dq, dk, dv = kernels.backward(q, k, v, out, lse, d_out, scale, causal, **options)
    return {"out": out, "lse": lse * np.log(2.0), "dq": dq, "dk": dk, "dv": dv}


def expected(q, k, v, d_out, scale: float, mask) -> dict[str, np.ndarray]:
    """float64 out, lse, dq, dk, dv; rows that see no key have lse +inf (the kernels' value)."""
    out, dq, dk, dv = reference.attention(q, k, v, scale, mask, d_out)
    with np.errstate(invalid="ignore"):
        lse = reference.log_sum_exp(q, k, scale, mask)
    return {"out": out, "lse": np.where(np.isnan(lse) | np.isneginf(lse), np.inf, lse), "dq": dq, "dk": dk, "dv": dv}


def _error(got: mx.array, want: np.ndarray, name: str) -> float:
    """Relative L2 error; an all-zero expectation allows a few units of rounding instead."""
    if name == "lse":
        a = np.array(got.astype(mx.float32)).astype(np.float64)
        same_inf = np.isinf(want) & (a == want)
        finite = np.isfinite(want)
        if not np.all(same_inf | finite) or not np.all(np.isfinite(a[finite])):
            return float("inf")
        return float(np.max(np.abs(a[finite] - want[finite]), initial=0.0))
    if not np.any(want):
        a = reference.to64(got)
        return float(np.max(np.abs(a))) if np.all(np.isfinite(a)) else float("inf")
    return reference.relative_error(got, want)


def assert_close(
    got: dict[str, mx.array], want: dict[str, np.ndarray], dtype, label: str, names: tuple | None = None
) -> dict[str, float]:
    """Checks each output against float64 (TOLERANCE, LSE_TOLERANCE); returns the errors."""
    errors = {}
    for name in names or tuple(want):
        assert got[name].shape == want[name].shape, f"{label} {name}: shape {got[name].shape}"
        errors[name] = _error(got[name], want[name], name)
    bounds = {n: LSE_TOLERANCE if n == "lse" else TOLERANCE[dtype] for n in errors}
    bad = {n: e for n, e in errors.items() if not e <= bounds[n]}
    with warnings.catch_warnings():  # all-NaN outputs make describe_error's nanmax warn
        warnings.simplefilter("ignore", RuntimeWarning)
        details = {n: reference.describe_error(got[n], want[n]) for n in bad if n != "lse"}
    assert not bad, f"{label}: errors over {bounds}: {bad}; {details}; all: {errors}"
    return errors


def mutated(kernel: metal.Kernel, old: str, new: str) -> types.SimpleNamespace:
    """metal's forward/backward with one textual edit of `kernel`, every launch emulated. The
    edited text must occur exactly once, so a mutant cannot silently stop applying."""
    count = kernel.source.count(old)
    assert count == 1, f"{kernel.name}: {old!r} occurs {count} times"
    broken = dataclasses.replace(kernel, source=kernel.source.replace(old, new))

    def run_launch(launch):
        if launch.kernel == kernel:
            launch = dataclasses.replace(launch, kernel=broken)
        return emulator.run(launch)

    return types.SimpleNamespace(
        forward=functools.partial(metal.forward, run=run_launch),
        backward=functools.partial(metal.backward, run=run_launch),
    )
