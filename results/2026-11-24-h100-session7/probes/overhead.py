# Where poc's forward spends wall time beyond its kernel: variants of the compiled forward call.
import statistics, time
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention import get
from flashtune.attention.kernels import cuda as ck

def wall(fn, n=30):
    for _ in range(5): fn()
    mx.synchronize(); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); mx.synchronize(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3

B, H, Hkv, D = 4, 32, 4, 64
for L in (2048, 256):
    ks = mx.random.split(mx.random.key(1), 4)
    q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
    k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
    v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
    qs = [q * (1 + i / 100) for i in range(10)]
    mx.eval(q, k, v, qs)
    poc, demo = get("poc"), get("demo")
    res = {}
    f_poc = mx.compile(lambda q, k, v: poc(q, k, v, scale=0.125, mask="causal"))
    f_demo = mx.compile(lambda q, k, v: demo(q, k, v, scale=0.125, mask="causal"))
    f_raw = mx.compile(lambda q, k, v: ck.forward(q, k, v, 0.125, True)[0])
    res["poc"] = wall(lambda: mx.eval(f_poc(q, k, v)))
    res["demo"] = wall(lambda: mx.eval(f_demo(q, k, v)))
    res["raw cuda.forward compiled"] = wall(lambda: mx.eval(f_raw(q, k, v)))
    res["raw cuda.forward eager"] = wall(lambda: mx.eval(ck.forward(q, k, v, 0.125, True)[0]))
    res["poc x10 per eval"] = wall(lambda: mx.eval([f_poc(x, k, v) for x in qs]), 10) / 10
    res["demo x10 per eval"] = wall(lambda: mx.eval([f_demo(x, k, v) for x in qs]), 10) / 10
    big = mx.fast.cuda_kernel(name="nullbig", input_names=["q"], output_names=["o"], header=ck._header(),
                              source="if (threadIdx.x == 0) o[0] = 1.f;")
    small = mx.fast.cuda_kernel(name="nullsmall", input_names=["q"], output_names=["o"], source="if (threadIdx.x == 0) o[0] = 1.f;")
    for name, kern in (("null small header", small), ("null full header", big)):
        res[name] = wall(lambda: mx.eval(kern(inputs=[q], grid=(32, 1, 1), threadgroup=(32, 1, 1), output_shapes=[(1,)], output_dtypes=[mx.float32])[0]))
    print(f"L={L}: " + ", ".join(f"{n} {t:.3f} ms" for n, t in res.items()), flush=True)
