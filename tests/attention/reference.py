"""float64 NumPy reference for the attention contract: forward and the exact gradients."""

import mlx.core as mx
import numpy as np

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)


def to64(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32)).astype(np.float64)


def keep_matrix(mask, B, H, L_q, L_k, segments=None):
    """The mask (and document ids) as (B, H, Lq, Lk): bool keep-matrix and additive bias
    (float64). Query i sees key j of row b only when segments[b, i] >= 0 and equals
    segments[b, j]."""
    keep, bias = _mask_matrix(mask, B, H, L_q, L_k)
    if segments is None:
        return keep, bias
    ids = np.array(segments)
    same = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] >= 0)  # (B, L, L)
    return keep & same[:, None], bias


def _mask_matrix(mask, B, H, L_q, L_k):
    if mask is None:
        return np.ones((B, H, L_q, L_k), bool), np.zeros((B, H, L_q, L_k))
    if isinstance(mask, str):
        keep = np.arange(L_k)[None, :] <= np.arange(L_q)[:, None] + (L_k - L_q)
        return np.broadcast_to(keep, (B, H, L_q, L_k)), np.zeros((B, H, L_q, L_k))
    m = np.array(mask.astype(mx.float32) if mask.dtype != mx.bool_ else mask)
    m = np.broadcast_to(m, (B, H, L_q, L_k))
    if m.dtype == bool:
        return m, np.zeros(m.shape)
    m = m.astype(np.float64)
    return np.isfinite(m) | (m > 0), np.where(np.isneginf(m), 0.0, m)


def masked_scores(q, k_full, scale, mask, segments=None):
    """float64 q k^T * scale + bias, (B, H, Lq, Lk), -inf where the mask drops a key; k_full
    has q's heads (GQA already repeated)."""
    B, H, L_q, _ = q.shape
    keep, bias = keep_matrix(mask, B, H, L_q, k_full.shape[2], segments)
    return np.where(keep, q @ k_full.swapaxes(-1, -2) * scale + bias, -np.inf)


def log_sum_exp(q, k, scale, mask):
    """float64 log-sum-exp of each query row's masked scores, (B, H, Lq) (natural log)."""
    q, k = to64(q), to64(k)
    scores = masked_scores(q, np.repeat(k, q.shape[1] // k.shape[1], axis=1), scale, mask)
    peak = scores.max(-1, keepdims=True)
    return np.log(np.exp(scores - peak).sum(-1)) + peak[..., 0]


def attention(q, k, v, scale, mask, d_out=None, segments=None):
    """Returns out (and dq, dk, dv for cotangent d_out) in float64; fully masked rows (and
    padding slots of ``segments``) are 0."""
    q, k, v = to64(q), to64(k), to64(v)
    B, H, L_q, D = q.shape
    H_kv, L_k = k.shape[1], k.shape[2]
    group = H // H_kv
    k_full, v_full = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = masked_scores(q, k_full, scale, mask, segments)
    row_max = scores.max(-1, keepdims=True)
    row_max = np.where(np.isneginf(row_max), 0.0, row_max)
    probs = np.exp(scores - row_max)
    denom = probs.sum(-1, keepdims=True)
    probs = probs / np.where(denom == 0, 1.0, denom)
    out = probs @ v_full
    if d_out is None:
        return out
    d_out = to64(d_out)
    d_v = (probs.swapaxes(-1, -2) @ d_out).reshape(B, H_kv, group, L_k, D).sum(2)
    d_probs = d_out @ v_full.swapaxes(-1, -2)
    d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True))
    d_q = d_scores @ k_full * scale
    d_k = (d_scores.swapaxes(-1, -2) @ q * scale).reshape(B, H_kv, group, L_k, D).sum(2)
    return out, d_q, d_k, d_v


def relative_error(actual: mx.array, expected: np.ndarray) -> float:
    """‖actual − expected‖ / ‖expected‖ (NaN/inf in ``actual`` give inf: NaN never passes)."""
    a = to64(actual)
    if not np.all(np.isfinite(a)):
        return float("inf")
    norm = np.linalg.norm(expected)
    return float(np.linalg.norm(a - expected) / (norm if norm > 0 else 1.0))


def describe_error(actual: mx.array, expected: np.ndarray) -> str:
    a = to64(actual)
    diff = np.abs(a - expected)
    return (
        f"rel {relative_error(actual, expected):.3g}, max abs {np.nanmax(diff):.3g}, "
        f"mean abs {np.nanmean(diff):.3g}, non-finite {int((~np.isfinite(a)).sum())}"
    )
