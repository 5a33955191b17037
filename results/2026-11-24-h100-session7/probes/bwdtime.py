# sm80 vs sm90 backward launches (kernel + delta + casts), TinyLlama and Qwen layouts, interleaved repeats; every call evaluated.
import statistics, sys, time
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
L_SET = tuple(int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "1000,2048,4096").split(","))
for name, (B, H, Hkv, D) in {"TinyLlama": (4, 32, 4, 64), "Qwen2.5-1.5B": (4, 12, 2, 128)}.items():
    launches = [("sm80", None)] + [("sm90", c) for c in ck.bwd_sm90_launches(D)]
    for L in L_SET:
        ks = mx.random.split(mx.random.key(L), 4)
        q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
        k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
        v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
        cot = mx.random.normal((B, H, L, D), key=ks[3]).astype(mx.bfloat16)
        out, lse = ck.forward(q, k, v, D**-0.5, True)
        mx.eval(q, k, v, cot, out, lse)
        fns = {(kern, cfg): (lambda kern=kern, cfg=cfg: ck.backward(q, k, v, out, lse, cot, D**-0.5, True, kernel=kern, config=cfg)) for kern, cfg in launches}
        ref = fns[("sm80", None)](); mx.eval(ref)
        errs = {}
        for key, fn in fns.items():
            got = fn(); mx.eval(got)
            errs[key] = max((mx.linalg.norm((a.astype(mx.float32) - b.astype(mx.float32)).flatten()) / mx.linalg.norm(b.astype(mx.float32).flatten())).item() for a, b in zip(got, ref))
            for _ in range(2): mx.eval(fn())
        times = {key: [] for key in fns}
        for rep in range(5):
            for key, fn in fns.items():
                for _ in range(4):
                    mx.synchronize(); t = time.perf_counter()
                    mx.eval(fn()); mx.synchronize()
                    times[key].append(time.perf_counter() - t)
        flops = 2.5 * 4 * B * H * L * L * D / 2
        cells = ", ".join(f"{kern}{cfg or ''} {statistics.median(ts)*1e3:.3f} ms {flops/statistics.median(ts)/1e12:.0f} TF/s err {errs[(kern, cfg)]:.1e}" for (kern, cfg), ts in times.items())
        print(f"{name} L={L} bwd: {cells}", flush=True)
