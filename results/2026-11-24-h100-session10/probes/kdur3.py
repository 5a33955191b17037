# cuDNN, session 9's forward and this forward, interleaved, a few calls each (for ncu's kernel
# durations; kdur_table.py 2 prints the medians).
import sys
from pathlib import Path
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
src = Path(__file__).with_name("fwd_sm90_s9.cu").read_text()
old_kernel = src[src.index("// Forward, grid (ceil(Lq / BM), Hq, B)"):].replace("}  // namespace ftpoc", "}  // namespace ftpoc_s9")
old_header = ck.header(ck._FWD_SM90) + "\nnamespace ftpoc_s9 {\nusing namespace ftpoc;\n" + old_kernel
old_body = """
    ftpoc_s9::flash_fwd_sm90<T, HEAD_DIM, BLOCK_N, WARPGROUPS, STAGES, CAUSAL>(
        q, k, v, params, q_shape[1], q_shape[2], k_shape[1], k_shape[2], out, lse);
"""
_orig_header = ck.header
ck.header = lambda files=ck.ALL_SOURCES: old_header if files == () else _orig_header(files)
def s9_forward(q, k, v, scale, config):
    B, H, L, D = q.shape
    bn, wg, st = config
    kern = ck._kernel("ftpoc_fwd_s9", old_body, ck._FWD_IO, ck.fwd_sm90_smem_bytes(D, *config), ())
    return kern(inputs=[q, k, v, mx.array([scale], dtype=mx.float32)],
                template=[("T", q.dtype), ("HEAD_DIM", D), ("BLOCK_N", bn), ("WARPGROUPS", wg), ("STAGES", st), ("CAUSAL", True)],
                grid=(-(-L // (64 * wg)) * 128 * wg, H, B), threadgroup=(128 * wg, 1, 1),
                output_shapes=[q.shape, (B, H, L)], output_dtypes=[q.dtype, mx.float32])
for name, (B, H, Hkv, D) in {"tiny": (4, 32, 4, 64), "qwen": (4, 12, 2, 128)}.items():
    for L in (2048, 4096):
        ks = mx.random.split(mx.random.key(0), 3)
        q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
        k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
        v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
        mx.eval(q, k, v)
        for rep in range(5):
            mx.eval(mx.fast.scaled_dot_product_attention(q, k, v, scale=D ** -0.5, mask="causal"))
            mx.eval(s9_forward(q, k, v, D ** -0.5, ck.FWD_SM90_CONFIG[D]))
            mx.eval(ck.forward(q, k, v, D ** -0.5, True))
