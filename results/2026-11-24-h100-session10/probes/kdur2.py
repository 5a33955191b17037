# OPT variants of the forward and cuDNN, a few calls each, interleaved (for ncu's kernel durations).
import sys, importlib.util
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
sys.argv = [sys.argv[0], "0", "0"]
spec = importlib.util.spec_from_file_location("fo", __file__.replace("kdur2.py", "fwdopt10.py"))
src = open(spec.origin).read().split("for name, (B, H, Hkv, D)")[0]
exec(src)
OPTS = [int(x) for x in __import__("os").environ.get("KD_OPTS", "0,1,4,5").split(",")]
for name, (B, H, Hkv, D) in {"tiny": (4, 32, 4, 64), "qwen": (4, 12, 2, 128)}.items():
    cfg = ck.FWD_SM90_CONFIG[D]
    ctas = ck.resident_sm90_ctas(D, *cfg) if D in ck.FWD_SM90_PERSISTENT else None
    for L in (2048, 4096):
        ks = mx.random.split(mx.random.key(0), 3)
        q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
        k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
        v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
        mx.eval(q, k, v)
        for rep in range(4):
            mx.eval(mx.fast.scaled_dot_product_attention(q, k, v, scale=D ** -0.5, mask="causal"))
            for opt in OPTS:
                mx.eval(fwd(q, k, v, D ** -0.5, opt, cfg, ctas))
