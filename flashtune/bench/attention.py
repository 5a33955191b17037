"""Attention benchmark: every registered implementation, forward and forward+backward.

Per shape and implementation it records median milliseconds, TFLOP/s (FLOPs counted below),
tokens/s, peak memory of one forward+backward, and the relative error against float32
``baseline`` on one batch element (the correctness check runs inside the bench, on the same
random inputs that are timed). Failures (out of memory, errors) are recorded, not dropped.
Forward and forward+backward are timed through ``mx.compile``, as training calls attention:
an implementation's Python wrapper then runs once, at trace time, not in every timed call.
Before the implementations of each shape it times the ``anchor`` (MLX's fused
``mx.fast.scaled_dot_product_attention`` with MLX's own gradient, not a registry entry) the
same way, so every run carries its own reference, measured in the same process.
Output: JSONL, a ``run_info`` header then one record per (shape, implementation).
"""

import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx

from flashtune import attention, env
from flashtune.bench import ATTENTION_REPEAT, ATTENTION_WARMUP
from flashtune.errors import is_out_of_memory


@dataclass(frozen=True)
class Shape:
    tag: str
    batch: int
    n_heads: int
    n_kv_heads: int
    length: int
    head_dim: int
    causal: bool = True

    def flops(self, backward: bool) -> float:
        """Matmul FLOPs: 4·B·H·L²·D forward (halved when causal), 3.5x that with the backward."""
        forward = 4 * self.batch * self.n_heads * self.length**2 * self.head_dim
        forward /= 2 if self.causal else 1
        return forward * (3.5 if backward else 1.0)


def _seed_grid() -> list[Shape]:
    return [Shape("seed", B, 16, 16, L, D) for B in (1, 2, 4) for L in (64, 128, 256) for D in (32, 64, 128)]


def _training(lengths=(512, 1000, 1024, 2000, 2048, 4096)) -> list[Shape]:
    shapes = []
    for L in lengths:
        shapes.append(Shape("tinyllama", 4, 32, 4, L, 64))
        shapes.append(Shape("qwen2.5-1.5b", 4, 12, 2, L, 128))
    return shapes


SHAPE_SETS: dict[str, Callable[[], list[Shape]]] = {
    "seed": _seed_grid,
    "training": _training,
    "memory": lambda: [Shape("memory", 1, 8, 2, 4096, 64)],
    "smoke": lambda: [Shape("smoke", 1, 8, 2, 256, 64), Shape("smoke", 1, 8, 2, 1000, 64)],
}


ANCHOR = "anchor"


def fused_sdpa(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask=None) -> mx.array:
    """The anchor: MLX's fused attention called bare (no padding, no masked-row handling)."""
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


def _implementation(name: str):
    return fused_sdpa if name == ANCHOR else attention.get(name)


def median_seconds(fn: Callable[[], None], warmup: int, repeat: int) -> float:
    """Median wall seconds of ``fn`` over ``repeat`` synchronized calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    mx.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        mx.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(shape: Shape, dtype, seed: int):
    mx.random.seed(seed)
    q = mx.random.normal((shape.batch, shape.n_heads, shape.length, shape.head_dim)).astype(dtype)
    kv_shape = (shape.batch, shape.n_kv_heads, shape.length, shape.head_dim)
    k, v = mx.random.normal(kv_shape).astype(dtype), mx.random.normal(kv_shape).astype(dtype)
    d_out = mx.random.normal(q.shape).astype(dtype)
    mx.eval(q, k, v, d_out)
    return q, k, v, d_out


def _relative_error(fn, q, k, v, scale, mask) -> float:
    """Error of ``fn`` on batch 0, first KV group, against float32 baseline."""
    group = q.shape[1] // k.shape[1]
    q1, k1, v1 = q[:1, :group], k[:1, :1], v[:1, :1]
    got = fn(q1, k1, v1, scale=scale, mask=mask).astype(mx.float32)
    ref = attention.get("baseline")(
        q1.astype(mx.float32), k1.astype(mx.float32), v1.astype(mx.float32), scale=scale, mask=mask
    )
    err = mx.linalg.norm((got - ref).flatten()) / mx.linalg.norm(ref.flatten())
    return float(err.item())


def _compiled_passes(fn, scale, mask):
    """(forward, forward+backward), each compiled once for the shape of the first call.

    The objective is sum(output * d_out) in the inputs' dtype, as the plain-MLX anchor probe
    times it, so every implementation pays the same extra kernels; the gradient reaching
    attention is d_out either way.
    """

    def objective(q, k, v, d_out):
        return (fn(q, k, v, scale=scale, mask=mask) * d_out).sum()

    forward = mx.compile(lambda q, k, v: fn(q, k, v, scale=scale, mask=mask))
    backward = mx.compile(mx.grad(objective, argnums=(0, 1, 2)))
    return forward, backward


def measure(name: str, shape: Shape, dtype, *, warmup: int, repeat: int, seed: int = 0) -> dict:
    """One record: timings, throughput, peak memory and error of ``name`` on ``shape``.

    Args:
        name: a registered implementation, or ``ANCHOR`` for bare fused SDPA.
    """
    fn = _implementation(name)
    record = {"impl": name, **asdict(shape), "dtype": str(dtype).split(".")[-1]}
    mask = "causal" if shape.causal else None
    scale = 1 / math.sqrt(shape.head_dim)
    try:
        q, k, v, d_out = _inputs(shape, dtype, seed)
        record["rel_err"] = _relative_error(fn, q, k, v, scale, mask)
        forward, backward = _compiled_passes(fn, scale, mask)
        mx.eval(forward(q, k, v), backward(q, k, v, d_out))  # trace and compile outside the clock
        mx.synchronize()
        mx.clear_cache()
        before = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(backward(q, k, v, d_out))
        mx.synchronize()
        record["peak_mb"] = mx.get_peak_memory() / 1e6
        record["extra_mb"] = (mx.get_peak_memory() - before) / 1e6
        record["fwd_ms"] = 1e3 * median_seconds(lambda: mx.eval(forward(q, k, v)), warmup, repeat)
        record["fwdbwd_ms"] = 1e3 * median_seconds(lambda: mx.eval(backward(q, k, v, d_out)), warmup, repeat)
        record["fwd_tflops"] = shape.flops(False) / record["fwd_ms"] / 1e9
        record["fwdbwd_tflops"] = shape.flops(True) / record["fwdbwd_ms"] / 1e9
        record["fwdbwd_tokens_per_s"] = shape.batch * shape.length / record["fwdbwd_ms"] * 1e3
        record["status"] = "ok"
    except (RuntimeError, ValueError, MemoryError) as error:
        record["status"] = "oom" if is_out_of_memory(error) else "error"
        record["error"] = str(error)[:300]
    finally:
        mx.clear_cache()
    if fn is attention.get("poc") and hasattr(fn, "last_path"):
        record["path"] = fn.last_path  # set while tracing: the route the compiled graph holds
    return record


def run(
    shape_sets: Iterable[str],
    impls: list[str] | None = None,
    dtype=None,
    warmup: int = ATTENTION_WARMUP,
    repeat: int = ATTENTION_REPEAT,
    out: Path | None = None,
    progress: Callable[[dict], None] = lambda record: None,
    anchor: bool = True,
) -> list[dict]:
    """Benchmarks ``impls`` (default: every registered name) on the named shape sets.

    Args:
        anchor: also time bare fused SDPA (impl "anchor") first on every shape.

    Returns:
        The records (the run_info header first); also written to ``out`` as JSONL.
    """
    impls = [attention.check_name(n) for n in (impls or attention.names())]
    shapes = [s for name in shape_sets for s in SHAPE_SETS[name]()]
    if dtype is None:  # bf16 is emulated (slow) on CPUs: compute in float32 there
        dtype = mx.bfloat16 if env.backend() != "cpu" else mx.float32
    header = env.run_info(
        {
            "shape_sets": list(shape_sets),
            "impls": impls,
            "warmup": warmup,
            "repeat": repeat,
            "anchor": anchor,
            "compiled": True,
        },
        dtype=str(dtype).split(".")[-1],
        kind="attention-bench",
    )
    records = [header]
    sink = open(out, "w") if out else None
    try:
        if sink:
            sink.write(json.dumps(header) + "\n")
        for shape in shapes:
            for name in ([ANCHOR] if anchor else []) + impls:
                record = measure(name, shape, dtype, warmup=warmup, repeat=repeat)
                records.append(record)
                progress(record)
                if sink:
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
    finally:
        if sink:
            sink.close()
    return records
