# Diagnostics of the sm90 forward on small problems: which part (S or PV) is wrong, if any.
import numpy as np
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck

np.set_printoptions(precision=3, linewidth=200, suppress=True)

def ref(q, k, v, scale, causal):
    q, k, v = (np.array(x.astype(mx.float32)).astype(np.float64) for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = q @ k.swapaxes(-1, -2) * scale
    if causal:
        Lq, Lk = s.shape[-2:]
        keep = np.arange(Lk)[None] <= np.arange(Lq)[:, None] + Lk - Lq
        s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    return p @ v, p

for D in (64, 128):
    for bn in (64, 128):
        for name in ("random", "q0", "vid"):
            L = 64 if name == "vid" else 130
            rng = np.random.default_rng(0)
            q = rng.standard_normal((1, 1, L, D)); k = rng.standard_normal((1, 1, L, D)); v = rng.standard_normal((1, 1, L, D))
            if name == "q0": q[:] = 0
            if name == "vid":
                v = np.zeros((1, 1, L, D)); v[0, 0, np.arange(L), np.arange(L) % D] = 1  # O = P (cols < D)
            q, k, v = (mx.array(x).astype(mx.bfloat16) for x in (q, k, v))
            try:
                out, lse = ck.forward(q, k, v, D**-0.5, False, config=(bn, 1, 2), kernel="sm90")
                o = np.array(out.astype(mx.float32))[0, 0]
            except Exception as e:
                print(D, bn, name, "ERROR", e); continue
            want, p = ref(q, k, v, D**-0.5, False)
            want = want[0, 0]
            err = np.abs(o - want)
            print(f"D={D} BN={bn} {name}: max err {err.max():.3g} rel {np.linalg.norm(o-want)/np.linalg.norm(want):.3g}")
            if err.max() > 0.05:
                bad = np.argwhere(err > 0.05)
                print("  bad rows", np.unique(bad[:, 0])[:20], "bad cols", np.unique(bad[:, 1])[:40])
                print("  got[0,:16]", o[0, :16]); print("  want[0,:16]", want[0, :16])
