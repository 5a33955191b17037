"""FlashAttention-2 in MLX ops: KV blocks, online softmax, and a block-recomputing custom VJP.

Neither pass materializes an (Lq, Lk) matrix: the forward keeps a running max and sum per
query row and saves only the output and the per-row log-sum-exp (LSE); the backward recomputes
each (block_q, block_k) tile of probabilities from the LSE. Extra memory is O(L), not O(L²).
Tiles wholly above a causal diagonal are skipped in both passes. It runs wherever MLX runs.

Packed sequences (``segments``): each tile's document mask is built from the ids of its query
rows and key columns, so memory stays O(L). Tiles whose query and key documents do not meet
are still computed (their probabilities are all zero): the loop over tiles is fixed when
MLX traces it, and the ids are data, so which tiles could be skipped is unknown at that time.
"""

import functools
import os

import mlx.core as mx

from flashtune import env
from flashtune.attention import register
from flashtune.attention.contract import causal_keep, conforming, grouped_mask, same_segment

# On CPUs 256 keeps a (G·block_q, block_k) float32 tile in the hundreds of KB for typical GQA
# groups, large enough that per-op overhead is small next to the matmuls. On a GPU each tile op
# is a kernel launch of a few microseconds, so 256 left `practical` launch-bound (slower than
# `baseline` for Qwen2.5-1.5B's 12/2 heads, D 128, on the H100); 512 quarters the tile count
# and a tile is still O(L) memory (B·Hq·512² floats). Metal is unmeasured and keeps 256.
# Override: FLASHTUNE_PRACTICAL_BLOCK.
BLOCK_BY_BACKEND = {"cuda": 512}
CPU_BLOCK = 256


def default_block() -> int:
    """Tile size along both axes: FLASHTUNE_PRACTICAL_BLOCK, else the backend's default."""
    override = os.environ.get("FLASHTUNE_PRACTICAL_BLOCK")
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"FLASHTUNE_PRACTICAL_BLOCK={override!r}; expected a positive integer")
        return int(override)
    return BLOCK_BY_BACKEND.get(env.backend(), CPU_BLOCK)


_INF = float("inf")


def _tile_mask(mask, causal, q_start, q_len, k_start, k_len, offset):
    """The keep/additive mask for one tile, shaped (b, Hkv, G, q_len, k_len), or None."""
    if causal:
        if k_start + k_len - 1 <= q_start + offset:
            return None  # the tile lies wholly on or below the diagonal: nothing masked
        return causal_keep(q_start, q_len, k_start, k_len, offset)
    if mask is None:
        return None
    rows = slice(q_start, q_start + q_len) if mask.shape[-2] > 1 else slice(None)
    cols = slice(k_start, k_start + k_len) if mask.shape[-1] > 1 else slice(None)
    return mask[..., rows, cols]


def _tile_masks(mask, causal, segments, q_start, q_len, k_start, k_len, offset):
    """The masks of one tile, each broadcastable to (B, Hkv, G, q_len, k_len): the causal or
    array mask, then the document mask of ``segments``; empty when nothing is masked."""
    tile_mask = _tile_mask(mask, causal, q_start, q_len, k_start, k_len, offset)
    masks = () if tile_mask is None else (tile_mask,)
    if segments is None:
        return masks
    documents = same_segment(segments[:, q_start : q_start + q_len], segments[:, k_start : k_start + k_len])[
        :, None, None
    ]  # (B, 1, 1, q_len, k_len)
    return masks + (documents,)


def _tile_scores(q_tile, k_tile, tile_masks, scale, group):
    """float32 scores of one tile, (B, Hkv, G*q_len, k_len), with the masks applied."""
    scores = (q_tile @ k_tile.swapaxes(-1, -2)).astype(mx.float32) * scale
    if not tile_masks:
        return scores
    B, n_kv_heads, rows, k_len = scores.shape
    scores = scores.reshape(B, n_kv_heads, group, rows // group, k_len)
    for tile_mask in tile_masks:
        if tile_mask.dtype == mx.bool_:
            scores = mx.where(tile_mask, scores, -_INF)
        else:
            scores = scores + tile_mask.astype(mx.float32)
    return scores.reshape(B, n_kv_heads, rows, k_len)


def _q_tile(x, q_start, q_len, n_kv_heads, group):
    """(B, Hkv, G, Lq, D) -> the rows of one query tile as (B, Hkv, G*q_len, D)."""
    B, _, _, _, D = x.shape
    return x[:, :, :, q_start : q_start + q_len].reshape(B, n_kv_heads, group * q_len, D)


def _blocks(length: int, block: int):
    return [(start, min(block, length - start)) for start in range(0, length, block)]


def _first_q_block(k_start, q_blocks, offset):
    """Index of the first query tile that sees key ``k_start`` under a causal mask."""
    for i, (q_start, q_len) in enumerate(q_blocks):
        if q_start + q_len - 1 + offset >= k_start:
            return i
    return len(q_blocks)


def _forward(q, k, v, mask, *, scale, causal, block_q, block_k, segments=None):
    """Returns out (B, Hq, Lq, D) and lse (B, Hkv, G, Lq) float32 (+inf on fully masked rows)."""
    B, n_heads, L_q, D = q.shape
    n_kv_heads, L_k = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    offset = L_k - L_q
    q5 = q.reshape(B, n_kv_heads, group, L_q, D)  # (B, Hkv, G, Lq, D)
    outs: list[mx.array] = []
    lses: list[mx.array] = []
    for q_start, q_len in _blocks(L_q, block_q):
        q_tile = _q_tile(q5, q_start, q_len, n_kv_heads, group)
        if outs:
            # Query tiles are independent, so MLX would run them all at once and hold every
            # tile's scores; chaining them keeps one tile in flight (O(L) memory, not O(L²)).
            q_tile = mx.depends(q_tile, outs[-1])
        rows = group * q_len
        acc = mx.zeros((B, n_kv_heads, rows, D), dtype=mx.float32)
        row_max = mx.full((B, n_kv_heads, rows, 1), -_INF, dtype=mx.float32)
        row_sum = mx.zeros((B, n_kv_heads, rows, 1), dtype=mx.float32)
        k_stop = min(L_k, q_start + q_len + offset) if causal else L_k
        for k_start, k_len in _blocks(k_stop, block_k):
            tile_masks = _tile_masks(mask, causal, segments, q_start, q_len, k_start, k_len, offset)
            scores = _tile_scores(q_tile, k[:, :, k_start : k_start + k_len], tile_masks, scale, group)
            new_max = mx.maximum(row_max, mx.max(scores, axis=-1, keepdims=True))
            safe_max = mx.where(new_max == -_INF, 0.0, new_max)
            probs = mx.exp(scores - safe_max)
            correction = mx.exp(row_max - safe_max)
            row_sum = row_sum * correction + mx.sum(probs, axis=-1, keepdims=True)
            pv = probs.astype(v.dtype) @ v[:, :, k_start : k_start + k_len]
            acc = acc * correction + pv.astype(mx.float32)
            row_max = new_max
        empty = row_sum == 0
        out = acc / mx.where(empty, 1.0, row_sum)
        outs.append(out.reshape(B, n_kv_heads, group, q_len, D))
        lses.append(mx.where(empty, _INF, row_max + mx.log(mx.where(empty, 1.0, row_sum))))
    out = mx.concatenate(outs, axis=3).reshape(B, n_heads, L_q, D).astype(q.dtype)
    lse = mx.concatenate([x.reshape(B, n_kv_heads, group, -1) for x in lses], axis=3)  # (B, Hkv, G, Lq)
    return out, lse


def _backward(q, k, v, mask, out, lse, d_out, *, scale, causal, block_q, block_k, segments=None):
    """dq, dk, dv by recomputing each tile's probabilities from the saved LSE."""
    B, n_heads, L_q, D = q.shape
    n_kv_heads, L_k = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    offset = L_k - L_q
    dt = q.dtype
    q5 = q.reshape(B, n_kv_heads, group, L_q, D)
    do5 = d_out.astype(dt).reshape(B, n_kv_heads, group, L_q, D)
    # delta_i = rowsum(dO_i * O_i): the softmax-Jacobian term of FlashAttention-2's backward.
    delta = mx.sum(d_out.astype(mx.float32) * out.astype(mx.float32), axis=-1).reshape(B, n_kv_heads, group, L_q)
    q_blocks = _blocks(L_q, block_q)
    dq_tiles: list[mx.array | None] = [None] * len(q_blocks)
    dks, dvs = [], []
    last_dq = None
    for k_start, k_len in _blocks(L_k, block_k):
        k_tile = k[:, :, k_start : k_start + k_len]
        v_tile = v[:, :, k_start : k_start + k_len]
        if dks:  # one KV tile in flight at a time, as in the forward
            k_tile, v_tile = mx.depends([k_tile, v_tile], [dks[-1], dvs[-1]])
        dk = mx.zeros((B, n_kv_heads, k_len, D), dtype=mx.float32)
        dv = mx.zeros((B, n_kv_heads, k_len, D), dtype=mx.float32)
        first = _first_q_block(k_start, q_blocks, offset) if causal else 0
        for i in range(first, len(q_blocks)):
            q_start, q_len = q_blocks[i]
            q_tile = _q_tile(q5, q_start, q_len, n_kv_heads, group)
            do_tile = _q_tile(do5, q_start, q_len, n_kv_heads, group)
            if last_dq is not None:  # finish the previous tile before this one starts
                q_tile, do_tile = mx.depends([q_tile, do_tile], [last_dq, dk, dv])
            rows = group * q_len
            tile_lse = lse[..., q_start : q_start + q_len].reshape(B, n_kv_heads, rows, 1)
            tile_delta = delta[..., q_start : q_start + q_len].reshape(B, n_kv_heads, rows, 1)
            tile_masks = _tile_masks(mask, causal, segments, q_start, q_len, k_start, k_len, offset)
            probs = mx.exp(_tile_scores(q_tile, k_tile, tile_masks, scale, group) - tile_lse)
            dv = dv + (probs.astype(dt).swapaxes(-1, -2) @ do_tile).astype(mx.float32)
            d_probs = (do_tile @ v_tile.swapaxes(-1, -2)).astype(mx.float32)
            d_scores = (probs * (d_probs - tile_delta)).astype(dt)
            dq_part = (d_scores @ k_tile).astype(mx.float32) * scale
            dq_tiles[i] = dq_part if dq_tiles[i] is None else dq_tiles[i] + dq_part
            last_dq = dq_tiles[i]
            dk = dk + (d_scores.swapaxes(-1, -2) @ q_tile).astype(mx.float32) * scale
        dks.append(dk)
        dvs.append(dv)
    dq = mx.concatenate(
        [
            (t if t is not None else mx.zeros((B, n_kv_heads, group * q_len, D))).reshape(
                B, n_kv_heads, group, q_len, D
            )
            for t, (_, q_len) in zip(dq_tiles, q_blocks)
        ],
        axis=3,
    ).reshape(q.shape)
    dk = mx.concatenate(dks, axis=2)
    dv = mx.concatenate(dvs, axis=2)
    return dq.astype(dt), dk.astype(dt), dv.astype(dt)


@functools.cache
def _flash_function(
    scale: float,
    causal: bool,
    with_mask: bool,
    block_q: int,
    block_k: int,
    with_segments: bool = False,
):
    """A custom_function for one static configuration (custom functions take arrays only).

    It takes ``q, k, v``, then the mask if ``with_mask``, then the segment ids if
    ``with_segments``; the mask and the ids get zero cotangents.
    """
    static = dict(scale=scale, causal=causal, block_q=block_q, block_k=block_k)

    def split(arrays):
        """The mask (or None) and the ``segments`` keyword, from the arrays after q, k, v."""
        mask = arrays[0] if with_mask else None
        return mask, (dict(segments=arrays[-1]) if with_segments else {})

    # Compiling each pass fuses a tile's dozen elementwise ops into a few kernels: on a GPU the
    # uncompiled tiles are launch-bound. (Inside an already compiled step this is inlined.)
    @mx.compile
    def forward(q, k, v, *arrays):
        mask, segments = split(arrays)
        return _forward(q, k, v, mask, **static, **segments)

    @mx.compile
    def backward(q, k, v, out, lse, d_out, *arrays):
        mask, segments = split(arrays)
        return _backward(q, k, v, mask, out, lse, d_out, **static, **segments)

    @mx.custom_function
    def flash(q, k, v, *arrays):
        return forward(q, k, v, *arrays)

    @flash.vjp
    def flash_vjp(primals, cotangents, outputs):
        q, k, v, *arrays = primals
        out, lse = outputs
        grads = backward(q, k, v, out, lse, cotangents[0], *arrays)
        return (*grads, *[mx.zeros_like(a) for a in arrays])

    return flash


def runs_here() -> str:
    """The path this implementation takes on the current backend (``flashtune attention``)."""
    block = default_block()
    return f"MLX ops on {env.backend()} in {block} x {block} tiles; O(L) extra memory forward and backward"


@register("practical")
@conforming
def practical(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    *,
    scale: float,
    mask=None,
    block_q: int | None = None,
    block_k: int | None = None,
    segments: mx.array | None = None,
) -> mx.array:
    """FlashAttention-2 forward and backward in MLX ops.

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D).
        scale: multiplier of q kᵀ.
        mask: None, "causal", a bool (keep) or an additive array (see contract.py).
        block_q, block_k: tile sizes along the query and key axes (default: `default_block`).
        segments: None or int32 (B, L) document ids (see contract.py), masked per tile.

    Returns:
        (B, Hq, Lq, D) in q's dtype.
    """
    block_q = default_block() if block_q is None else block_q
    block_k = default_block() if block_k is None else block_k
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive; got {block_q}, {block_k}")
    causal = isinstance(mask, str)
    arrays = (q, k, v)
    with_mask = isinstance(mask, mx.array)
    if with_mask:
        arrays += (grouped_mask(mask, q.shape[1], k.shape[1]),)
    with_segments = segments is not None
    if with_segments:
        arrays += (segments,)
    flash = _flash_function(float(scale), causal, with_mask, block_q, block_k, with_segments)
    return flash(*arrays)[0]
