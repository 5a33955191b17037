# One layout's poc forward at L=2048, a few calls (for ncu). Usage: python3 fwdone.py tiny|qwen
import sys
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
B, H, Hkv, D = {"tiny": (4, 32, 4, 64), "qwen": (4, 12, 2, 128)}[sys.argv[1]]
L = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
ks = mx.random.split(mx.random.key(0), 3)
q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
mx.eval(q, k, v)
for _ in range(3):
    mx.eval(ck.forward(q, k, v, D ** -0.5, True))
