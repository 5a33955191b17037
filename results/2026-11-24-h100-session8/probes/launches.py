# Every allowed wgmma forward launch (cuda.sm90_launches) at the benchmark's shapes, with
# cuDNN's forward beside: kernel calls, uncompiled, eval per call, interleaved, median.
import statistics, sys, time
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
EXTRA = {128: [(64, 2, 4), (64, 2, 5), (64, 1, 4)]}
L_SET = tuple(int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "2048,4096").split(","))
for name, (B, H, Hkv, D) in {"TinyLlama": (4, 32, 4, 64), "Qwen2.5-1.5B": (4, 12, 2, 128)}.items():
    for L in L_SET:
        ks = mx.random.split(mx.random.key(L), 3)
        q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
        k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
        v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
        mx.eval(q, k, v)
        s = D ** -0.5
        fns = {"cudnn": lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=s, mask="causal")}
        for cfg in ck.sm90_launches(D) + EXTRA.get(D, []):
            fns[cfg] = lambda cfg=cfg: ck.forward(q, k, v, s, True, config=cfg, kernel="sm90")
        for fn in fns.values():
            for _ in range(3): mx.eval(fn())
        times = {key: [] for key in fns}
        for rep in range(6):
            for key, fn in fns.items():
                for _ in range(5):
                    mx.synchronize(); t = time.perf_counter(); mx.eval(fn()); mx.synchronize()
                    times[key].append(time.perf_counter() - t)
        med = {key: statistics.median(t) for key, t in times.items()}
        flops = 4 * B * H * L * L * D / 2
        for key in fns:
            print(f"{name} L={L} {key}: {med[key]*1e3:.3f} ms {flops / med[key] / 1e12:.0f} TF/s cudnn/this {med['cudnn']/med[key]:.2f}"
                  + ("  (default)" if key == ck.FWD_SM90_CONFIG.get(D) else ""), flush=True)
