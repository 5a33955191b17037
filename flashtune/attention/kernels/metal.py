"""Metal flash-attention kernels (mx.fast.metal_kernel): the same FlashAttention-2 algorithm.

Forward: online softmax over K/V tiles held in threadgroup memory, saving the log-sum-exp
(log2 units). Backward: dK/dV per KV row block walking the query blocks of every query head
of its GQA group, and dQ in a separate pass (no atomics), both recomputing probabilities from
the LSE; nothing of size Lq x Lk is ever stored. One simdgroup owns one row (a query row, or a
key row in the dK/dV pass) and its 32 lanes split the head dimension; dot products are
simd_sum reductions. With ``segments`` (per-document ids) a row sees only its own document,
and every tile whose documents cannot meet the block's is skipped by the whole threadgroup.
The bodies are in metal_source.py.

Every launch is first described (``forward_launch``, ``backward_launches``: kernel source,
inputs, template constants, grid, threadgroup) and then run by ``run_on_gpu``; the tests run
the same descriptions on the CPU through ``metal_emulator``.

Verified without Apple hardware, under that emulation (tests/attention/kernels): the algorithm
and this exact source, wrapped as MLX wraps it, against a float64 reference for every head dim,
both dtypes, causal or not, odd lengths, Lq != Lk, GQA and segments (documents of length 1,
across tiles, padding; the tiles skipped are counted); that no thread reads or writes outside
its buffers, races on threadgroup memory, lets threadgroup memory it never wrote (NaN there)
reach a result, or reaches a barrier or simd_sum that others of its group or simdgroup skip;
and the 32 KB threadgroup-memory limit. Only a Mac can verify that the Metal compiler accepts
the source, the GPU's own rounding (fused multiply-adds, exp2 precision, simd_sum order), the
pipeline's thread limit and the speed; ``poc`` therefore still checks every variant against
``practical`` at first use and falls back if it fails (see poc.py and docs/metal-emulator.md).
"""

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from flashtune.attention.kernels import metal_source
from flashtune.attention.kernels.segments import checked_segments

HEAD_DIMS = (32, 64, 80, 96, 128)
DTYPES = (mx.bfloat16, mx.float16)
ROWS = 8  # simdgroups, hence rows, per threadgroup
# Keys (forward, dQ) or queries (dK/dV) per threadgroup-memory tile: two float32 tiles of
# 16 x 128 are 16 KB, half of the 32 KB an Apple GPU threadgroup may hold.
TILE = 16
SEGMENTS = True  # forward and backward take per-document ids (segments=)


@dataclass(frozen=True)
class Kernel:
    """What mx.fast.metal_kernel compiles: a name, the buffer names and the body."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Launch:
    """One call of a Kernel: everything the kernel object is called with."""

    kernel: Kernel
    inputs: tuple[mx.array, ...]
    template: tuple[tuple[str, Any], ...]
    grid: tuple[int, int, int]
    threadgroup: tuple[int, int, int]
    output_shapes: tuple[tuple[int, ...], ...]
    output_dtypes: tuple[mx.Dtype, ...]


Runner = Callable[[Launch], Sequence[mx.array]]

_BACKWARD_INPUTS = ("q", "k", "v", "dout", "lse", "delta", "params")
_BACKWARD_SEGMENT_INPUTS = ("q", "k", "v", "segments", "dout", "lse", "delta", "params")
FORWARD = Kernel("ftpoc_flash_fwd", ("q", "k", "v", "params"), ("out", "lse"), metal_source.FORWARD)
DQ = Kernel("ftpoc_flash_dq", _BACKWARD_INPUTS, ("dq",), metal_source.DQ)
DKDV = Kernel("ftpoc_flash_dkdv", _BACKWARD_INPUTS, ("dk", "dv"), metal_source.DKDV)
# The same kernels with per-document masking and tile skipping (metal_source's markers).
FORWARD_SEGMENTS = Kernel(
    "ftpoc_flash_fwd_seg", ("q", "k", "v", "segments", "params"), ("out", "lse"), metal_source.FORWARD_SEGMENTS
)
DQ_SEGMENTS = Kernel("ftpoc_flash_dq_seg", _BACKWARD_SEGMENT_INPUTS, ("dq",), metal_source.DQ_SEGMENTS)
DKDV_SEGMENTS = Kernel("ftpoc_flash_dkdv_seg", _BACKWARD_SEGMENT_INPUTS, ("dk", "dv"), metal_source.DKDV_SEGMENTS)


@functools.cache
def _metal_kernel(kernel: Kernel):
    """The kernel object; MLX compiles each template instance on first use."""
    return mx.fast.metal_kernel(
        name=kernel.name,
        input_names=list(kernel.input_names),
        output_names=list(kernel.output_names),
        source=kernel.source,
    )


def run_on_gpu(launch: Launch) -> list[mx.array]:
    """Runs a launch through mx.fast.metal_kernel (needs MLX's Metal backend).

    Returns:
        The outputs, in the order of ``launch.kernel.output_names``.
    """
    return _metal_kernel(launch.kernel)(
        inputs=list(launch.inputs),
        template=list(launch.template),
        grid=launch.grid,
        threadgroup=launch.threadgroup,
        output_shapes=list(launch.output_shapes),
        output_dtypes=list(launch.output_dtypes),
    )


def supports(q: mx.array, k: mx.array) -> bool:
    """True when the kernels handle this dtype and head dim."""
    return q.dtype in DTYPES and q.shape[-1] in HEAD_DIMS


def _template(q: mx.array, causal: bool) -> tuple[tuple[str, Any], ...]:
    return (
        ("T", q.dtype),
        ("HEAD_DIM", q.shape[-1]),
        ("CAUSAL", causal),
        ("ROWS", ROWS),
        ("TILE", TILE),
    )


def _rows_grid(n_rows: int, n_heads: int, batch: int) -> tuple[int, int, int]:
    """One threadgroup of ROWS simdgroups per ROWS rows, per head and batch entry."""
    return (-(-n_rows // ROWS) * 32 * ROWS, n_heads, batch)


def _params(scale: float) -> mx.array:
    return mx.array([scale], dtype=mx.float32)


def forward_launch(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    scale: float,
    causal: bool,
    segments: mx.array | None = None,
) -> Launch:
    """The forward kernel's launch for q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) and optional
    document ids (B, L) (``checked_segments``)."""
    B, n_heads, L_q, _ = q.shape
    segments = checked_segments(q, k, segments)
    with_ids = () if segments is None else (segments,)
    return Launch(
        kernel=FORWARD if segments is None else FORWARD_SEGMENTS,
        inputs=(q, k, v, *with_ids, _params(scale)),
        template=_template(q, causal),
        grid=_rows_grid(L_q, n_heads, B),
        threadgroup=(32 * ROWS, 1, 1),
        output_shapes=(tuple(q.shape), (B, n_heads, L_q)),
        output_dtypes=(q.dtype, mx.float32),
    )


def backward_launches(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    out: mx.array,
    lse: mx.array,
    d_out: mx.array,
    scale: float,
    causal: bool,
    segments: mx.array | None = None,
) -> tuple[Launch, Launch]:
    """The dQ and dK/dV launches; the row sums delta = rowsum(dO * O) are MLX ops here."""
    B, n_heads, L_q, _ = q.shape
    n_kv_heads, L_k = k.shape[1], k.shape[2]
    segments = checked_segments(q, k, segments)
    with_ids = () if segments is None else (segments,)
    d_out = d_out.astype(q.dtype)
    delta = mx.sum(d_out.astype(mx.float32) * out.astype(mx.float32), axis=-1)
    inputs = (q, k, v, *with_ids, d_out, lse, delta, _params(scale))
    template = _template(q, causal)
    dq_kernel, dkdv_kernel = (DQ, DKDV) if segments is None else (DQ_SEGMENTS, DKDV_SEGMENTS)
    dq = Launch(
        dq_kernel, inputs, template, _rows_grid(L_q, n_heads, B), (32 * ROWS, 1, 1), (tuple(q.shape),), (q.dtype,)
    )
    dkdv = Launch(
        dkdv_kernel,
        inputs,
        template,
        _rows_grid(L_k, n_kv_heads, B),
        (32 * ROWS, 1, 1),
        (tuple(k.shape), tuple(v.shape)),
        (k.dtype, v.dtype),
    )
    return dq, dkdv


def forward(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    scale: float,
    causal: bool,
    segments: mx.array | None = None,
    run: Runner | None = None,
) -> tuple[mx.array, mx.array]:
    """Flash-attention forward.

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D), bf16 or fp16 (``supports``).
        scale: multiplier of q kᵀ. causal: lower-right aligned causal mask (Lq <= Lk).
        segments: None, or int32 (B, L) document ids with Lq == Lk == L: query i sees key j
            only when both ids are equal and non-negative (and j <= i when causal); rows with
            a negative id are padding (output 0, lse +inf, zero gradient).
        run: executes a launch (default ``run_on_gpu``; the tests pass the emulator's).

    Returns:
        out (B, Hq, Lq, D) in q's dtype and lse (B, Hq, Lq) float32, log2 units.
    """
    out, lse = (run or run_on_gpu)(forward_launch(q, k, v, scale, causal, segments))
    return out, lse


def backward(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    out: mx.array,
    lse: mx.array,
    d_out: mx.array,
    scale: float,
    causal: bool,
    segments: mx.array | None = None,
    run: Runner | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """dq, dk, dv in the inputs' dtype (dQ by its own pass); arguments as in ``forward``,
    with its out and lse and the cotangent d_out."""
    dq_launch, dkdv_launch = backward_launches(q, k, v, out, lse, d_out, scale, causal, segments)
    run = run or run_on_gpu
    (dq,) = run(dq_launch)
    dk, dv = run(dkdv_launch)
    return dq, dk, dv
