"""MLX's fused ``mx.fast.scaled_dot_product_attention``, made training-aware.

What helps, per backend (measured on an H100 and on the Linux CPU; benchmarks/h100/attention/):
- CUDA: MLX runs cuDNN's fused backward only when the query length is a multiple of 128
  (mlx/backend/cuda/scaled_dot_product_attention.cpp, ``ScaledDotProductAttentionVJP::
  use_fallback``); otherwise the gradient recomputes unfused attention with the full score
  matrix (3x slower and 4-5x the memory at L=1000 vs 1024). So on CUDA, fp16/bf16, we pad q,
  k and v at the end to the next multiple of 128 and slice the output back. With the causal
  mask aligned lower-right and Lq <= Lk, a real query row i sees keys j <= i + (Lk - Lq) <
  Lk, so padded keys are never seen and real rows are bit-for-bit the same; padded query rows
  get zero cotangent, hence contribute nothing to dK and dV. Without a mask only q is padded,
  and only while Lq stays <= Lk. Array masks are padded with "masked" key columns, and not
  at all when Lq > Lk (MLX's fused path returned wrong dq there on the H100).
- CPU: MLX has no fused kernel on CPU; forward and backward are MLX's unfused fallback, so
  padding would only add work. Nothing is changed.
- Metal: the fused forward handles any length, and there is no fused backward at all, so
  padding cannot help; nothing is changed. (For long-context training on Metal use
  ``practical`` or ``poc``, whose backward is O(L) in memory.)
Fully masked query rows are made explicit (zeros, zero gradient) because the fused kernels
would otherwise return NaN there.

Packed sequences (``segments``): MLX's SDPA takes no document ids, so demo builds the document
mask from them, a bool (B, 1, L, L) with the causal or array mask ANDed in, and passes it as
an array mask (padding slots are fully masked rows, handled as above). What runs then, per
backend (MLX 0.32 source, ml-explore/mlx; unmeasured on CUDA and Metal, no GPU here):
- CUDA: fp16/bf16 with head dim a multiple of 8 up to 128 runs cuDNN's fused forward with
  the mask as its bias (``supports_sdpa_cudnn`` does not look at array masks; ``set_bias``),
  and cuDNN's fused backward when the query length is a multiple of 128, which the padding
  above gives (``ScaledDotProductAttentionVJP::use_fallback``). MLX turns a bool mask into an
  additive one after broadcasting it to (B, Hq, L, L) (fast.cpp, "Convert bool mask to
  additive mask"), so on CUDA demo passes the document mask additive in q's dtype,
  (B, 1, L, L), which cuDNN reads with a zero head stride. float32 or other head dims: MLX's
  unfused attention, forward and backward, with the (B, Hq, L, L) scores materialized.
- Metal: while differentiating, MLX always runs its unfused attention
  (``ScaledDotProductAttention::use_fallback``: "if (is_training) return true") and has no
  fused backward; without gradients, the fused full-attention kernel takes the bool mask
  directly (``supports_bool_mask``) for query lengths over 8 and head dims 64, 72, 80, 96, 128.
- CPU: MLX's unfused attention, always, with the scores materialized.
So wherever MLX does not fuse, demo's memory with segments is O(L²) per head, like
``baseline``; ``practical`` (and ``poc``'s kernels where they take segments) stay O(L).
"""

import mlx.core as mx

from flashtune import env
from flashtune.attention import register
from flashtune.attention.baseline import baseline
from flashtune.attention.contract import causal_keep, conforming, keep_mask_rows, same_segment

FUSED_BACKWARD_MULTIPLE = 128
# cuDNN's fused SDPA on CUDA: fp16/bf16, head dims multiple of 8 up to 128 (same source file).
_CUDNN_DTYPES = (mx.float16, mx.bfloat16)


def padded_length(q: mx.array, k: mx.array) -> int:
    """Query length to run at so that MLX's fused CUDA backward engages (Lq itself if not)."""
    L_q, D = q.shape[2], q.shape[3]
    if (
        env.backend() != "cuda"
        or L_q <= 1  # decoding: MLX's vector kernel, no backward wanted
        or L_q % FUSED_BACKWARD_MULTIPLE == 0
        or q.dtype not in _CUDNN_DTYPES
        or D % 8
        or D > 128
    ):
        return L_q
    return -(-L_q // FUSED_BACKWARD_MULTIPLE) * FUSED_BACKWARD_MULTIPLE


def _pad_axis(x: mx.array, axis: int, extra: int, value=0) -> mx.array:
    # Concatenating a filled block beat mx.pad on the H100 in every case measured (demo fwd+bwd at
    # L=1000, compiled: 0.55 vs 0.65 ms for Qwen2.5-1.5B's heads, 0.81 vs 0.84 ms for TinyLlama's;
    # `flashtune bench attention --impl demo` with each padding).
    shape = list(x.shape)
    shape[axis] = extra
    return mx.concatenate([x, mx.full(shape, value, dtype=x.dtype)], axis=axis)


def _pad_mask(mask: mx.array, extra: int, L_k: int) -> mx.array:
    """Pads a rank-4 array mask so padded keys are hidden and padded query rows see real keys."""
    hidden, shown = (False, True) if mask.dtype == mx.bool_ else (-float("inf"), 0)
    if mask.shape[-1] == 1:  # a mask broadcast over the keys must still hide the padded ones
        mask = mx.broadcast_to(mask, (*mask.shape[:-1], L_k))
    mask = _pad_axis(mask, -1, extra, hidden)
    if mask.ndim >= 2 and mask.shape[-2] > 1:
        mask = _pad_axis(mask, -2, extra, shown)
    return mask


def _document_mask(mask, segments: mx.array) -> mx.array:
    """The mask of ``segments`` ANDed with ``mask``: a bool (B, 1 or Hq, L, L), or an additive
    one when ``mask`` is additive."""
    L = segments.shape[1]
    keep = same_segment(segments, segments)[:, None]  # (B, 1, L, L)
    if isinstance(mask, str):
        return keep & causal_keep(0, L, 0, L, 0)
    if mask is None:
        return keep
    if mask.dtype == mx.bool_:
        return keep & mask
    return mx.where(keep, mask.astype(mx.float32), -float("inf"))


def _fused_forward_reference_backward(q, k, v, scale, mask):
    """Fused forward; gradient of the materialized reference (MLX's own unfused fallback)."""
    arrays = (q, k, v) + ((mask,) if isinstance(mask, mx.array) else ())
    static_mask = mask if isinstance(mask, str) else None

    def reference(q, k, v, *maybe_mask):
        m = maybe_mask[0] if maybe_mask else static_mask
        return baseline(q, k, v, scale=scale, mask=m)

    @mx.custom_function
    def fused(*arrays):
        m = arrays[3] if len(arrays) == 4 else static_mask
        return mx.fast.scaled_dot_product_attention(*arrays[:3], scale=scale, mask=m)

    @fused.vjp
    def fused_vjp(primals, cotangent, output):
        _, grads = mx.vjp(reference, list(primals), [cotangent])
        return tuple(grads)

    return fused(*arrays)


_PATHS = {
    "cuda": "cuDNN's fused forward and backward for fp16/bf16 with head dim <= 128 (queries padded to a "
    "multiple of 128); MLX's unfused path otherwise",
    "metal": "fused forward for inference; when training, MLX's unfused forward and backward (it has no fused "
    "backward on Metal): (L, L) scores per head",
    "cpu": "MLX's unfused forward and backward (no fused kernel on the CPU): (L, L) scores per head",
}


def runs_here() -> str:
    """The path this implementation takes on the current backend (``flashtune attention``)."""
    return _PATHS[env.backend()]


@register("demo")
@conforming
def demo(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask=None, segments=None) -> mx.array:
    """Fused SDPA with the padding and masked-row handling described in the module docstring.

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D).
        scale: multiplier of q kᵀ.
        mask: None, "causal", a bool (keep) or an additive array (see contract.py).
        segments: None or int32 (B, L) document ids (see contract.py), passed to MLX as a mask.

    Returns:
        (B, Hq, Lq, D) in q's dtype.
    """
    keep_rows = None
    if segments is not None:
        mask = _document_mask(mask, segments)
    if isinstance(mask, mx.array):
        keep_rows = keep_mask_rows(mask)
        if mask.dtype == mx.bool_:
            mask = mask | ~keep_rows  # let empty rows see everything, then zero them below
        else:
            mask = mx.where(keep_rows, mask, 0).astype(q.dtype)
        if segments is not None and mask.dtype == mx.bool_ and env.backend() == "cuda":
            # MLX would expand a bool mask to (B, Hq, L, L) before cuDNN (module docstring).
            mask = mx.where(mask, mx.array(0, q.dtype), mx.array(-float("inf"), q.dtype))
    L_q, L_k = q.shape[2], k.shape[2]
    extra = padded_length(q, k) - L_q
    if L_q != L_k:
        # Only self-attention (training) is padded: on the H100, MLX's fused CUDA backward gave
        # wrong dq when Lq != Lk (dq ~ 0 at Lq 64 / Lk 200 causal; an illegal address at Lq 127 /
        # Lk 65 with an additive mask), so those cases also get the unfused gradient below.
        extra = 0
    if extra:
        q = _pad_axis(q, 2, extra)
        if mask is not None:
            k, v = _pad_axis(k, 2, extra), _pad_axis(v, 2, extra)
        if isinstance(mask, mx.array):
            mask = _pad_mask(mask, extra, L_k)
    if L_q != L_k and env.backend() == "cuda":
        out = _fused_forward_reference_backward(q, k, v, scale, mask)
    else:
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    if extra:
        out = out[:, :, :L_q]
    if keep_rows is not None:
        out = mx.where(keep_rows, out, 0)
    return out
