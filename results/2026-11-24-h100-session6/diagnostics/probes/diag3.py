# Hypotheses for the D=64, 64-key sm90 forward bug, as header edits; q=0, V=r/8 (want 7.94) and random.
import numpy as np
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
h = ck._header()
zero = "    float s[NB][32];\n#pragma unroll\n    for (int nb = 0; nb < NB; ++nb)\n#pragma unroll\n      for (int i = 0; i < 32; ++i) s[nb][i] = 0.f;\n    pin(qf);"
variants = {
    "as is": h,
    "s zeroed": h.replace("    float s[NB][32];\n    pin(qf);", zero),
    "s zeroed+acc": h.replace("    float s[NB][32];\n    pin(qf);", zero).replace("sw128_desc(addr, 16, 1024), kk > 0);", "sw128_desc(addr, 16, 1024), 1);"),
    "wait after S fence": h.replace("    wgmma_commit();\n    wgmma_wait_all();\n#pragma unroll\n    for (int nb = 0; nb < NB; ++nb) pin(s[nb]);",
                                    "    wgmma_commit();\n    wgmma_wait_all();\n    __syncwarp();\n#pragma unroll\n    for (int nb = 0; nb < NB; ++nb) pin(s[nb]);"),
}
for name, hdr in variants.items():
    print(name, "changed" if hdr != h or name == "as is" else "UNCHANGED (edit did not apply)")
L = 128
k = mx.array(np.random.default_rng(0).standard_normal((1, 1, L, 64))).astype(mx.bfloat16)
rows = np.broadcast_to(np.arange(L, dtype=np.float32)[:, None] / 8, (L, 64))
qr = mx.array(np.random.default_rng(1).standard_normal((1, 1, L, 64))).astype(mx.bfloat16)
vr = mx.array(np.random.default_rng(2).standard_normal((1, 1, L, 64))).astype(mx.bfloat16)
qd, kd, vd = (np.array(x.astype(mx.float32))[0, 0].astype(np.float64) for x in (qr, k, vr))
s = qd @ kd.T * 0.125; p = np.exp(s - s.max(1, keepdims=True)); p /= p.sum(1, keepdims=True); want = p @ vd
for i, (name, hdr) in enumerate(variants.items()):
    kern = mx.fast.cuda_kernel(name=f"diag3_{i}", input_names=["q", "k", "v", "params"], output_names=["out", "lse"],
                               source=ck._FWD_SM90_BODY, header=hdr, shared_memory=ck.fwd_sm90_smem_bytes(64, 64, 1, 2))
    def run(q, v):
        out, _ = kern(inputs=[q, k, v, mx.array([0.125], dtype=mx.float32)],
                      template=[("T", mx.bfloat16), ("HEAD_DIM", 64), ("BLOCK_N", 64), ("WARPGROUPS", 1), ("STAGES", 2), ("CAUSAL", False)],
                      grid=(2 * 128, 1, 1), threadgroup=(128, 1, 1), output_shapes=[q.shape, q.shape[:3]], output_dtypes=[q.dtype, mx.float32])
        return np.array(out.astype(mx.float32))[0, 0]
    o1 = run(mx.zeros((1, 1, L, 64), dtype=mx.bfloat16), mx.array(rows[None, None]).astype(mx.bfloat16))
    o2 = run(qr, vr)
    print(f"{name:20s} V=r/8 row0 {o1[0, :3]} row127 {o1[127, :3]} | random rel err {np.linalg.norm(o2 - want) / np.linalg.norm(want):.3g}", flush=True)
