"""Launchers for the CUDA flash-attention kernels (mx.fast.cuda_kernel): flash_common.cu
(helpers), flash_attention.cu (mma.sync forward and backward, any NVIDIA GPU),
flash_forward_sm90.cu and flash_backward_sm90.cu (wgmma forward and backward, Hopper;
``forward_kernel`` and ``backward_kernel`` pick them there for head dims 64 and 128).

``forward`` returns the output and the per-row log-sum-exp (log2 units); ``backward``
returns dq, dk, dv. Both take q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) in bf16 or fp16,
row-contiguous (MLX copies otherwise), with Lq <= Lk when causal (contract.conforming).
"""

import ctypes
import functools
import logging

import mlx.core as mx

from flashtune.attention.kernels import cuda_source as source
from flashtune.attention.kernels.segments import checked_segments
from flashtune.log import say_once

HEAD_DIMS = (32, 64, 80, 96, 128)
DTYPES = (mx.bfloat16, mx.float16)
# Packed rows (document ids, segments=) run the mma.sync kernels (flash_attention.cu), which
# skip every tile pair whose documents cannot meet; the wgmma kernels take no ids.
SEGMENTS = True
BLOCK_N_FWD = 64  # keys per forward tile (BN in flash_fwd)
# Forward (warps, row tiles of 16 per warp): BM = 16 * warps * tiles query rows per CTA.
# Backward warps: 16 * warps keys (and query rows per step) per CTA. Measured on an H100
# (docs/kernels.md, CUDA kernels for any GPU); callers may pass others for experiments.
FWD_CONFIG = {32: (4, 2), 64: (4, 2), 80: (4, 1), 96: (4, 1), 128: (4, 2)}
# Hopper (sm_90) runs the wgmma forward (flash_forward_sm90.cu) for these head dims, with
# (keys per K/V tile, warpgroups of 64 query rows per CTA, K/V tile buffers: 3).
FWD_SM90_CONFIG = {64: (128, 1, 3), 128: (128, 2, 3)}
# Keys per tile whose launches pass the float64 checks on the H100 at every head dim of
# FWD_SM90_CONFIG (64-key tiles at D=64 only since 41ccbef: docs/kernels.md, Hopper forward).
FWD_SM90_BLOCK_N = (64, 128)
MAX_SMEM_BYTES = 227 * 1024  # dynamic shared memory one CTA may have on the H100
SM_SMEM_BYTES = 228 * 1024  # shared memory of one SM
CTA_RESERVED_SMEM_BYTES = 1024  # of it, taken by the system per resident CTA
BWD_WARPS = {32: 4, 64: 8, 80: 4, 96: 4, 128: 4}
# Hopper runs the wgmma backward (flash_backward_sm90.cu) for these head dims, with
# (warpgroups of 64 keys per CTA, row tiles of 64 queries per step).
BWD_SM90_CONFIG = {64: (2, 2), 128: (2, 1)}
# The backward runs one query head per CTA (float32 dK/dV partials, summed over the GQA
# group by MLX) unless one CTA per KV head gives at least this many CTAs. Looping over the
# group inside the CTA was 13-26% slower on the H100 at L=2048, so it is off by default.
GROUPED_MIN_CTAS = 10**9


@functools.cache
def is_sm90() -> bool:
    """True on a compute capability 9.x GPU, where MLX compiles for sm_90a (wgmma)."""
    info = mx.device_info() if mx.cuda.is_available() else {}
    return info.get("compute_capability_major") == 9 or str(info.get("architecture")) == "sm_90"


@functools.cache
def _kernel(
    name: str, body: str, io: tuple[tuple[str, ...], tuple[str, ...]], shared_memory: int, files: tuple[str, ...]
):
    """Kernel object per entry point and shared-memory size, compiled with the device code
    of ``files`` only; MLX compiles each template instance on first use."""
    return mx.fast.cuda_kernel(
        name=name,
        input_names=list(io[0]),
        output_names=list(io[1]),
        source=body,
        header=source.header(files),
        shared_memory=shared_memory,
    )


def supports(q: mx.array, k: mx.array) -> bool:
    """True when the kernels handle this dtype and head dim."""
    return q.dtype in DTYPES and q.shape[-1] in HEAD_DIMS


def fwd_smem_bytes(D: int, n_warps: int, m_tiles: int) -> int:
    """Q tile + two K and two V tiles, rows padded to D + 8 elements of 2 bytes."""
    return (16 * n_warps * m_tiles + 4 * BLOCK_N_FWD) * (D + 8) * 2


def fwd_sm90_smem_bytes(D: int, block_n: int, warpgroups: int, stages: int) -> int:
    """1 KB alignment slack, K and V tiles per stage (swizzled, unpadded), a padded Q tile."""
    return 1024 + 2 * stages * block_n * D * 2 + 64 * warpgroups * (D + 8) * 2


@functools.cache
def sm_count() -> int | None:
    """Streaming multiprocessors of CUDA device 0 (MLX's GPU), from the driver; None when it
    cannot be asked (the forward then runs one CTA per tile)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, count = ctypes.c_int(), ctypes.c_int()
    ok = (
        driver.cuInit(0) == 0
        and driver.cuDeviceGet(ctypes.byref(device), 0) == 0
        and driver.cuDeviceGetAttribute(ctypes.byref(count), 16, device) == 0
    )  # 16: SMs
    return count.value if ok and count.value > 0 else None


def resident_sm90_ctas(D: int, block_n: int, warpgroups: int, stages: int) -> int | None:
    """CTAs of the wgmma forward that run at once on this GPU. Every launch uses more than
    128 registers per thread (ptxas), so registers allow one CTA of two warpgroups or two of
    one per SM; shared memory may allow fewer."""
    sms = sm_count()
    if sms is None:
        return None
    cta_smem = fwd_sm90_smem_bytes(D, block_n, warpgroups, stages) + CTA_RESERVED_SMEM_BYTES
    per_sm = min(2 // warpgroups, SM_SMEM_BYTES // cta_smem)
    return sms * max(1, per_sm)


def _choose(direction: str, D: int, sm90_head_dims) -> str:
    kernel = "sm90" if D in sm90_head_dims and is_sm90() else "sm80"
    say_once(
        f"poc-cuda-{direction}-{kernel}-{D}",
        f"poc: CUDA {direction} '{kernel}' ({'wgmma' if kernel == 'sm90' else 'mma.sync'}) for head dim {D}",
        logging.INFO,
    )
    return kernel


@functools.cache
def forward_kernel(D: int) -> str:
    """Which forward runs for head dim D on this GPU: "sm90" (wgmma) or "sm80" (mma.sync).

    Cached, so the choice is logged once per head dim and costs nothing per call."""
    return _choose("forward", D, FWD_SM90_CONFIG)


@functools.cache
def backward_kernel(D: int) -> str:
    """Which backward runs for head dim D on this GPU: "sm90" (wgmma) or "sm80" (mma.sync)."""
    return _choose("backward", D, BWD_SM90_CONFIG)


def sm90_launches(D: int) -> list[tuple[int, int, int]]:
    """Every allowed (keys per tile, warpgroups, stages) of the wgmma forward at head dim D
    whose shared memory fits one CTA."""
    return [
        (n, wg, 3)
        for n in FWD_SM90_BLOCK_N
        for wg in (1, 2)
        if D in FWD_SM90_CONFIG and fwd_sm90_smem_bytes(D, n, wg, 3) <= MAX_SMEM_BYTES
    ]


def bwd_smem_bytes(D: int, n_warps: int) -> int:
    """K, V, two Q and two dO tiles, dS^T, and two buffers of LSE and delta."""
    block = 16 * n_warps
    return 6 * block * (D + 8) * 2 + block * (block + 8) * 2 + 4 * block * 4


def bwd_sm90_smem_bytes(D: int, warpgroups: int, q_tiles: int) -> int:
    """1 KB alignment slack, K and V (64 keys per warpgroup), two Q and two dO tiles
    (64 rows per row tile), dS^T, and two buffers of LSE and delta."""
    block_n, block_m = 64 * warpgroups, 64 * q_tiles
    tiles = 2 * block_n * D + 4 * block_m * D + block_n * block_m  # 2-byte elements
    return 1024 + 2 * tiles + 4 * block_m * 4


@functools.cache
def bwd_sm90_launches(D: int) -> list[tuple[int, int]]:
    """Every (warpgroups, query row tiles) of the wgmma backward at head dim D that fits one
    CTA's shared memory and splits dQ's 64 x 64 tiles evenly over the warpgroups (cached:
    ``backward`` checks its launch against it on every call)."""
    return [
        (wg, qm)
        for wg in (1, 2)
        for qm in (1, 2)
        if D in BWD_SM90_CONFIG and qm * (D // 64) % wg == 0 and bwd_sm90_smem_bytes(D, wg, qm) <= MAX_SMEM_BYTES
    ]


def _params(scale: float) -> mx.array:
    return mx.array([scale], dtype=mx.float32)


def forward(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    scale: float,
    causal: bool,
    config: tuple[int, ...] | None = None,
    poison: float | None = None,
    kernel: str | None = None,
    ctas: int | None = None,
    segments: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """Returns out (B, Hq, Lq, D) in q's dtype and lse (B, Hq, Lq) float32, log2 units.

    ``kernel`` is "sm90" or "sm80", default ``forward_kernel(D)``; ``config`` is, for sm80,
    (warps, row tiles per warp), default ``FWD_CONFIG``, and for sm90 (keys per tile,
    warpgroups, stages), default ``FWD_SM90_CONFIG``; ``poison`` (tests) pre-fills the
    outputs, e.g. with NaN, to show that every element is written. ``ctas`` (sm90) is the
    grid: by default as many CTAs as run on the GPU at once (persistent: each walks several
    tiles of 64 * warpgroups query rows and copies the next tile's Q and first K/V block
    under the current one; docs/kernels.md, Hopper forward), or one per tile when the SM count
    is unknown. ``segments`` (int32 document ids (B, L), Lq == Lk) runs the sm80 kernel.
    """
    segments = checked_segments(q, k, segments)
    if segments is None and (kernel or forward_kernel(q.shape[-1])) == "sm90":
        return _forward_sm90(q, k, v, scale, causal, config, poison, ctas)
    B, n_heads, L_q, D = q.shape
    n_warps, m_tiles = config or FWD_CONFIG[D]
    block_m = 16 * n_warps * m_tiles
    smem = fwd_smem_bytes(D, n_warps, m_tiles)
    if segments is None:
        function, inputs = _kernel("ftpoc_flash_fwd", source.FWD_BODY, source.FWD_IO, smem, source.SM80), [q, k, v]
    else:
        function = _kernel("ftpoc_flash_fwd_seg", source.FWD_SEG_BODY, source.FWD_SEG_IO, smem, source.SM80)
        inputs = [q, k, v, segments]
    out, lse = function(
        inputs=[*inputs, _params(scale)],
        template=[
            ("T", q.dtype),
            ("HEAD_DIM", D),
            ("NWARPS", n_warps),
            ("MTILES", m_tiles),
            ("CAUSAL", causal),
        ],
        grid=(-(-L_q // block_m) * 32 * n_warps, n_heads, B),
        threadgroup=(32 * n_warps, 1, 1),
        output_shapes=[q.shape, (B, n_heads, L_q)],
        output_dtypes=[q.dtype, mx.float32],
        init_value=poison,
    )
    return out, lse


def _forward_sm90(q, k, v, scale, causal, config, poison, ctas) -> tuple[mx.array, mx.array]:
    """The wgmma forward (``forward``'s arguments; no segments)."""
    B, n_heads, L_q, D = q.shape
    if D not in FWD_SM90_CONFIG:
        raise ValueError(f"sm90 forward: no kernel for head dim {D}; valid: {tuple(FWD_SM90_CONFIG)}")
    block_n, warpgroups, stages = config = tuple(config or FWD_SM90_CONFIG[D])
    if block_n not in FWD_SM90_BLOCK_N:
        raise ValueError(
            f"sm90 forward: {block_n} keys per tile at head dim {D} is not "
            f"one of the checked tile sizes {FWD_SM90_BLOCK_N}"
        )
    if stages != 3:
        raise ValueError(
            f"sm90 forward: {stages} K/V buffers; the pipeline has 3 (blocks j - 1 and j are read while j + 1 loads)"
        )
    smem = fwd_sm90_smem_bytes(D, *config)
    tiles = -(-L_q // (64 * warpgroups)) * n_heads * B
    if ctas is None:
        ctas = resident_sm90_ctas(D, *config)
    ctas = min(tiles, ctas or tiles)
    return _kernel("ftpoc_flash_fwd_sm90", source.FWD_SM90_BODY, source.FWD_IO, smem, source.FWD_SM90)(
        inputs=[q, k, v, _params(scale)],
        template=[
            ("T", q.dtype),
            ("HEAD_DIM", D),
            ("BLOCK_N", block_n),
            ("WARPGROUPS", warpgroups),
            ("STAGES", stages),
            ("CAUSAL", causal),
        ],
        grid=(max(ctas, 1) * 128 * warpgroups, 1, 1),
        threadgroup=(128 * warpgroups, 1, 1),
        output_shapes=[q.shape, (B, n_heads, L_q)],
        output_dtypes=[q.dtype, mx.float32],
        init_value=poison,
    )


def softmax_delta(d_out: mx.array, out: mx.array) -> mx.array:
    """rowsum(dO * O) in float32, (B, Hq, Lq): FlashAttention-2's softmax-Jacobian term.

    One kernel reading both once; as MLX ops it took two float32 copies and a reduction."""
    B, n_heads, L_q, D = out.shape
    rows_per_block = 4
    return _kernel("ftpoc_softmax_delta", source.DELTA_BODY, source.DELTA_IO, 0, source.DELTA)(
        inputs=[d_out, out.astype(d_out.dtype)],
        template=[("T", d_out.dtype), ("HEAD_DIM", D)],
        grid=(-(-B * n_heads * L_q // rows_per_block) * 32 * rows_per_block, 1, 1),
        threadgroup=(32 * rows_per_block, 1, 1),
        output_shapes=[(B, n_heads, L_q)],
        output_dtypes=[mx.float32],
    )[0]


def backward(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    out: mx.array,
    lse: mx.array,
    d_out: mx.array,
    scale: float,
    causal: bool,
    n_warps: int = 0,
    kernel: str | None = None,
    config: tuple[int, int] | None = None,
    segments: mx.array | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """dq, dk, dv in the inputs' dtype; dQ accumulates with float32 atomics.

    ``kernel`` is "sm90" or "sm80", default ``backward_kernel(D)``; sm90 takes ``config``
    (warpgroups, query row tiles), default ``BWD_SM90_CONFIG``; sm80 takes ``n_warps``,
    default ``BWD_WARPS``. ``segments`` (int32 document ids (B, L), Lq == Lk) runs sm80.
    """
    segments = checked_segments(q, k, segments)
    B, n_heads, L_q, D = q.shape
    n_kv_heads, L_k = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    wgmma = segments is None and (kernel or backward_kernel(D)) == "sm90"
    sm90_config = tuple(config) if config else BWD_SM90_CONFIG.get(D)
    if wgmma and sm90_config not in bwd_sm90_launches(D):
        raise ValueError(
            f"sm90 backward: (warpgroups, query row tiles) {sm90_config} does not "
            f"fit head dim {D}; valid: {bwd_sm90_launches(D)}"
        )
    d_out = d_out.astype(q.dtype)
    with_ids = [] if segments is None else [segments]
    inputs = [q, k, v, *with_ids, d_out, lse, softmax_delta(d_out, out), _params(scale)]
    function, launch, out_heads = _backward_launch(q, k, causal, sm90_config if wgmma else None, n_warps, segments)
    dq, dk, dv = function(
        inputs=inputs,
        output_shapes=[q.shape, (B, out_heads, L_k, D), (B, out_heads, L_k, D)],
        output_dtypes=[mx.float32, mx.float32, mx.float32],
        init_value=0.0,
        **launch,
    )
    if out_heads != n_kv_heads:
        dk = dk.reshape(B, n_kv_heads, group, L_k, D).sum(axis=2)  # (B, Hkv, Lk, D)
        dv = dv.reshape(B, n_kv_heads, group, L_k, D).sum(axis=2)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _backward_launch(q, k, causal, sm90_config, n_warps, segments):
    """(kernel, launch arguments, heads of the dK/dV outputs) of ``backward``: the wgmma kernel
    when ``sm90_config`` is given, else mma.sync (with the document ids when ``segments``)."""
    B, n_heads, _, D = q.shape
    n_kv_heads, L_k = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    if sm90_config:
        warpgroups, q_tiles = sm90_config
        n_kv_blocks = -(-L_k // (64 * warpgroups))
        out_heads = n_kv_heads  # the kernel sums dK, dV over the GQA group
        launch = dict(
            template=[
                ("T", q.dtype),
                ("HEAD_DIM", D),
                ("WARPGROUPS", warpgroups),
                ("QTILES", q_tiles),
                ("CAUSAL", causal),
            ],
            grid=(n_kv_blocks * 128 * warpgroups, n_heads, B),
            threadgroup=(128 * warpgroups, 1, 1),
        )
        function = _kernel(
            "ftpoc_flash_bwd_sm90",
            source.BWD_SM90_BODY,
            source.BWD_IO,
            bwd_sm90_smem_bytes(D, warpgroups, q_tiles),
            source.BWD_SM90,
        )
    else:
        n_warps = n_warps or BWD_WARPS[D]
        n_kv_blocks = -(-L_k // (16 * n_warps))
        grouped = group > 1 and B * n_kv_heads * n_kv_blocks >= GROUPED_MIN_CTAS
        out_heads = n_kv_heads if grouped else n_heads
        launch = dict(
            template=[("T", q.dtype), ("HEAD_DIM", D), ("NWARPS", n_warps), ("CAUSAL", causal)],
            grid=(n_kv_blocks * 32 * n_warps, out_heads, B),
            threadgroup=(32 * n_warps, 1, 1),
        )
        name, body, io = ("ftpoc_flash_bwd", source.BWD_BODY, source.BWD_IO)
        if segments is not None:
            name, body, io = ("ftpoc_flash_bwd_seg", source.BWD_SEG_BODY, source.BWD_SEG_IO)
        function = _kernel(name, body, io, bwd_smem_bytes(D, n_warps), source.SM80)
    return function, launch, out_heads
