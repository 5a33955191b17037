"""The document ids (``segments``) that the kernels of every backend take, checked once."""

import mlx.core as mx


def checked_segments(q: mx.array, k: mx.array, segments: mx.array | None) -> mx.array | None:
    """The document ids as int32 (B, L), or None.

    Raises:
        ValueError: ids that are not integers of shape (B, L) with Lq == Lk == L.
    """
    if segments is None:
        return None
    B, _, L_q, _ = q.shape
    L_k = k.shape[2]
    if L_q != L_k or tuple(segments.shape) != (B, L_q):
        raise ValueError(
            f"segments must have shape (B, L) with Lq == Lk == L; got segments "
            f"{tuple(segments.shape)}, q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if not mx.issubdtype(segments.dtype, mx.integer):
        raise ValueError(f"segments must hold integer document ids; got {segments.dtype}")
    return segments.astype(mx.int32)
