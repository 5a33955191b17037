# A few calls of the default forward and backward (TinyLlama or Qwen layout, L=2048 causal) for ncu.
import sys
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
B, H, Hkv, D = (4, 32, 4, 64) if (sys.argv[1:] or ["tiny"])[0] == "tiny" else (4, 12, 2, 128)
L = 2048
ks = mx.random.split(mx.random.key(1), 4)
q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
cot = mx.random.normal((B, H, L, D), key=ks[3]).astype(mx.bfloat16)
for _ in range(3):
    out, lse = ck.forward(q, k, v, D**-0.5, True)
    mx.eval(ck.backward(q, k, v, out, lse, cot, D**-0.5, True))
