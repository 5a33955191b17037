"""Manual attention: the whole (Lq, Lk) score matrix, float32 softmax. The reference everyone beats."""

import mlx.core as mx

from flashtune import env
from flashtune.attention import register
from flashtune.attention.contract import (
    as_grouped,
    causal_keep,
    conforming,
    grouped_mask,
    masked_scores,
    safe_row_max,
    same_segment,
)


def runs_here() -> str:
    """The path this implementation takes on the current backend (``flashtune attention``)."""
    return f"MLX ops on {env.backend()}: the (Lq, Lk) scores of every head are held, forward and backward"


@register("baseline")
@conforming
def baseline(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask=None, segments=None) -> mx.array:
    """softmax(q kᵀ · scale + mask) v with the scores (and any document mask) materialized.

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D).
        scale: multiplier of q kᵀ.
        mask: None, "causal", a bool (keep) or an additive array (see contract.py).
        segments: None or int32 (B, L) document ids (see contract.py).

    Returns:
        (B, Hq, Lq, D) in q's dtype.
    """
    B, n_heads, L_q, D = q.shape
    n_kv_heads, L_k = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    scores = (as_grouped(q, n_kv_heads) @ k.swapaxes(-1, -2)).astype(mx.float32) * scale
    scores = scores.reshape(B, n_kv_heads, group, L_q, L_k)  # (B, Hkv, G, Lq, Lk)
    if isinstance(mask, str):
        mask = causal_keep(0, L_q, 0, L_k, L_k - L_q)
    elif mask is not None:
        mask = grouped_mask(mask, n_heads, n_kv_heads)
    scores = masked_scores(scores, mask)
    if segments is not None:
        scores = masked_scores(scores, same_segment(segments, segments)[:, None, None])
    probs = mx.exp(scores - safe_row_max(scores))
    denom = mx.sum(probs, axis=-1, keepdims=True)
    probs = probs / mx.where(denom == 0, 1.0, denom)  # fully masked rows stay 0
    probs = probs.astype(v.dtype).reshape(B, n_kv_heads, group * L_q, L_k)
    return (probs @ v).reshape(B, n_heads, L_q, D).astype(q.dtype)
