"""The attention contract every registered implementation obeys, enforced in one place.

``fn(q, k, v, *, scale, mask=None, segments=None) -> out``:
  q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D) with Hq % Hkv == 0 (GQA, never pre-tiled);
  mask None, "causal" (lower-right aligned, as mx.fast: the last query sees the last key),
  a bool array (True = keep) or an additive array, broadcastable to (B, Hq, Lq, Lk).
  The output has q's dtype; softmax accumulates in float32.

Array masks: every mask ``mx.fast.scaled_dot_product_attention`` accepts, i.e. rank 0 to 4,
broadcastable to (B, Hq, Lq, Lk), bool or additive (float16, bfloat16, float32, or an integer
type, added as its value). MLX also requires an additive mask's dtype to promote to q's;
here any of those dtypes goes with any q (the mask is added in float32). float64 and complex
masks are refused, as MLX refuses them.

segments (packed sequences): an int32 (B, L) array of document ids, for self-attention only
(Lq == Lk == L). Query i sees key j only when ``segments[b, i] >= 0`` and ``segments[b, i] ==
segments[b, j]``, ANDed with ``mask``. A negative id marks a padding slot: its output row is
zero with zero gradient, and as a key it is never seen. ``segments=None`` changes nothing.

Fully masked query rows (a bool row of all False, an additive row of all -inf, the first
Lq - Lk rows of a causal mask when Lq > Lk, or a padding slot) output zeros and pass zero
gradient. This is what FlashAttention does (its log-sum-exp is -inf there) and avoids NaN
leaking into dK and dV.
"""

import functools
from collections.abc import Callable

import mlx.core as mx

Mask = str | mx.array | None
FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)
SEGMENTS_DTYPE = mx.int32


def validate(q: mx.array, k: mx.array, v: mx.array, mask: Mask, segments: mx.array | None = None) -> None:
    """Raises ValueError, naming the shapes, when the inputs break the contract."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects rank-4 (B, H, L, D) inputs; got {shapes}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {shapes}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"batch size of q and k/v differ; got {shapes}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dim of q and k/v differ; got {shapes}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]}); got {shapes}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"q, k, v must share one of float32/float16/bfloat16; got {q.dtype}, {k.dtype}, {v.dtype}")
    if mask is None or isinstance(mask, mx.array):
        pass
    elif isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask string must be 'causal'; got {mask!r}")
    else:
        raise ValueError(f"mask must be None, 'causal' or an array; got {type(mask).__name__}")
    if isinstance(mask, mx.array):
        _validate_mask(mask, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]), shapes)
    if segments is not None:
        _validate_segments(segments, q, k, shapes)


def _validate_mask(mask: mx.array, target: tuple, shapes: str) -> None:
    if mask.ndim > 4 or any(m not in (1, t) for m, t in zip(mask.shape[::-1], target[::-1])):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} is not broadcastable to (B, Hq, Lq, Lk) = {target}; {shapes}"
        )
    if not (mask.dtype == mx.bool_ or mask.dtype in FLOAT_DTYPES or mx.issubdtype(mask.dtype, mx.integer)):
        raise ValueError(
            f"mask dtype {mask.dtype} is not supported; use bool (keep) or an additive "
            f"float16/bfloat16/float32 or integer mask"
        )


def _validate_segments(segments, q: mx.array, k: mx.array, shapes: str) -> None:
    if not isinstance(segments, mx.array):
        raise ValueError(f"segments must be an int32 mx.array of shape (B, L); got {type(segments).__name__}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"segments need self-attention (Lq == Lk); got {shapes}, segments {tuple(segments.shape)}")
    expected = (q.shape[0], q.shape[2])
    if segments.ndim != 2 or tuple(segments.shape) != expected:
        raise ValueError(f"segments must have shape (B, L) = {expected}; got {tuple(segments.shape)}, {shapes}")
    if segments.dtype != SEGMENTS_DTYPE:
        raise ValueError(f"segments must be int32; got {segments.dtype} (shape {tuple(segments.shape)})")


def keep_mask_rows(mask: mx.array) -> mx.array:
    """Returns a bool array, True where a query row keeps at least one key."""
    keep = mask if mask.dtype == mx.bool_ else mask > -float("inf")
    return mx.any(keep, axis=-1, keepdims=True)


def same_segment(rows: mx.array, cols: mx.array) -> mx.array:
    """Bool (B, n_rows, n_cols): query ids ``rows`` (B, n_rows) may see key ids ``cols``.

    True where the ids are equal and the query's id is not negative (padding sees nothing).
    """
    rows = rows[:, :, None]
    return (rows == cols[:, None, :]) & (rows >= 0)


def causal_keep(q_start: int, q_len: int, k_start: int, k_len: int, offset: int) -> mx.array:
    """Bool (q_len, k_len) block of a lower-right aligned causal mask.

    Query row i (absolute) may see key j when j <= i + offset, with offset = Lk - Lq.
    """
    rows = mx.arange(q_start, q_start + q_len)[:, None] + offset
    cols = mx.arange(k_start, k_start + k_len)[None, :]
    return cols <= rows


def conforming(fn: Callable) -> Callable:
    """Wraps an implementation's core so that it only sees inputs that meet the contract.

    The core may assume: validated shapes and dtypes, array masks of rank 4, and for
    ``mask="causal"``, Lq <= Lk. Causal rows that see no key (Lq > Lk) are produced here as
    zeros. The core is given ``segments=`` only when segments are passed, so without them
    it runs exactly as a core that has never heard of them.
    """

    @functools.wraps(fn)
    def attention(q, k, v, *, scale: float, mask: Mask = None, segments=None, **options):
        validate(q, k, v, mask, segments)
        if isinstance(mask, mx.array) and mask.ndim < 4:
            mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))  # (1.., Lq|1, Lk|1)
        if segments is not None:
            options["segments"] = segments
        L_q, L_k = q.shape[2], k.shape[2]
        if isinstance(mask, str) and L_q > L_k:
            # Only the last Lk query rows see any key; the rest are fully masked.
            seen = fn(q[:, :, L_q - L_k :], k, v, scale=scale, mask=mask, **options)
            blank = mx.zeros((*q.shape[:2], L_q - L_k, v.shape[-1]), dtype=seen.dtype)
            return mx.concatenate([blank, seen], axis=2)
        return fn(q, k, v, scale=scale, mask=mask, **options)

    return attention


def as_grouped(x: mx.array, n_kv_heads: int) -> mx.array:
    """(B, Hq, L, D) -> (B, Hkv, G*L, D): query heads that share a KV head become rows.

    This lets one matmul per KV head serve the whole group without tiling K and V.
    """
    B, Hq, L, D = x.shape
    return x.reshape(B, n_kv_heads, (Hq // n_kv_heads) * L, D)


def grouped_mask(mask: mx.array, n_heads: int, n_kv_heads: int) -> mx.array:
    """Broadcastable (.., Hq or 1, Lq, Lk) mask -> (b, Hkv or 1, G or 1, Lq, Lk)."""
    while mask.ndim < 4:
        mask = mask[None]
    b, h, lq, lk = mask.shape
    if h == 1:
        return mask[:, :, None]
    return mask.reshape(b, n_kv_heads, n_heads // n_kv_heads, lq, lk)


def masked_scores(scores: mx.array, mask: mx.array | None) -> mx.array:
    """Applies a bool (keep) or additive mask to float32 scores."""
    if mask is None:
        return scores
    if mask.dtype == mx.bool_:
        return mx.where(mask, scores, -float("inf"))
    return scores + mask.astype(mx.float32)


def safe_row_max(scores: mx.array) -> mx.array:
    """Row max with -inf replaced by 0, so exp(s - max) is 0 (not NaN) on fully masked rows."""
    m = mx.max(scores, axis=-1, keepdims=True)
    return mx.where(m == -float("inf"), 0.0, m)
