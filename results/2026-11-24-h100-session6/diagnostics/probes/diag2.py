# Which V rows/columns does the D=64, 64-key sm90 forward read for blocks past the first?
import numpy as np
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck

np.set_printoptions(precision=2, linewidth=220, suppress=True)
header = ck._header()
variants = {
    "as is": header,
    "tile stride 16 KB": header.replace("constexpr int TILE_BYTES = BN * D * 2;",
                                        "constexpr int TILE_BYTES = BN * D * 2 < 16384 ? 16384 : BN * D * 2;"),
}
def run(hdr, q, k, v, cfg):
    kern = mx.fast.cuda_kernel(name="diag_fwd", input_names=["q", "k", "v", "params"], output_names=["out", "lse"],
                               source=ck._FWD_SM90_BODY, header=hdr, shared_memory=ck.fwd_sm90_smem_bytes(64, *cfg) + 16384)
    bn, wg, st = cfg
    out, lse = kern(inputs=[q, k, v, mx.array([0.125], dtype=mx.float32)],
                    template=[("T", q.dtype), ("HEAD_DIM", 64), ("BLOCK_N", bn), ("WARPGROUPS", wg), ("STAGES", st), ("CAUSAL", False)],
                    grid=(-(-q.shape[2] // (64 * wg)) * 128 * wg, q.shape[1], q.shape[0]), threadgroup=(128 * wg, 1, 1),
                    output_shapes=[q.shape, q.shape[:3]], output_dtypes=[q.dtype, mx.float32])
    return np.array(out.astype(mx.float32))[0, 0]
L = 128
for name, hdr in variants.items():
    for cfg in [(64, 1, 2), (128, 1, 2)]:
        q = mx.zeros((1, 1, L, 64), dtype=mx.bfloat16)
        k = mx.array(np.random.default_rng(0).standard_normal((1, 1, L, 64))).astype(mx.bfloat16)
        rows = np.broadcast_to(np.arange(L, dtype=np.float32)[:, None] / 8, (L, 64))
        cols = np.broadcast_to(np.arange(64, dtype=np.float32)[None, :], (L, 64))
        for vname, v in [("V=r/8", rows), ("V=c", cols)]:
            o = run(hdr, q, k, mx.array(v[None, None]).astype(mx.bfloat16), cfg)
            print(f"{name:18s} {cfg} {vname}: want {v.mean(0)[:6]} got row0 {o[0, :6]} row63 {o[63, :6]} row127 {o[127, :6]}")
        # random q, one-hot-ish check vs reference
        qr = mx.array(np.random.default_rng(1).standard_normal((1, 1, L, 64))).astype(mx.bfloat16)
        vr = mx.array(np.random.default_rng(2).standard_normal((1, 1, L, 64))).astype(mx.bfloat16)
        o = run(hdr, qr, k, vr, cfg)
        qd, kd, vd = (np.array(x.astype(mx.float32))[0, 0].astype(np.float64) for x in (qr, k, vr))
        s = qd @ kd.T * 0.125; p = np.exp(s - s.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        print(f"{name:18s} {cfg} random: rel err {np.linalg.norm(o - p @ vd) / np.linalg.norm(p @ vd):.3g}")
