# Where the wgmma backward's time goes: variants with parts removed by text substitution (timing only).
import statistics, time
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck

SUBS = {
    "full": [],
    "no-atomics": [("        if (row < Lq) {\n          const float4 val", "        if (row < -1) {\n          const float4 val")],
    "no-dq": [("        if (row < Lq) {\n          const float4 val", "        if (row < -1) {\n          const float4 val"),
              ("        WgmmaSS<T, 1, 1>::run(dqa[x]", "        if (0) WgmmaSS<T, 1, 1>::run(dqa[x]")],
    "no-dkdv": [("        Wgmma<T, 1>::run(dva[p]", "        if (0) Wgmma<T, 1>::run(dva[p]"),
                ("        Wgmma<T, 1>::run(dka[p]", "        if (0) Wgmma<T, 1>::run(dka[p]")],
    "no-sdp": [("        WgmmaSS<T, 0, 0>::run(st[nq]", "        if (0) WgmmaSS<T, 0, 0>::run(st[nq]"),
               ("        WgmmaSS<T, 0, 0>::run(dpt[nq]", "        if (0) WgmmaSS<T, 0, 0>::run(dpt[nq]")],
}
base = ck._header()
for name, subs in SUBS.items():
    for a, b in subs:
        assert a in base, (name, a)
for lname, (B, H, Hkv, D) in {"TinyLlama": (4, 32, 4, 64), "Qwen2.5-1.5B": (4, 12, 2, 128)}.items():
    L = 2048
    wg, qm = ck.BWD_SM90_CONFIG[D]
    ks = mx.random.split(mx.random.key(1), 4)
    q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
    k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
    v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
    cot = mx.random.normal((B, H, L, D), key=ks[3]).astype(mx.bfloat16)
    out, lse = ck.forward(q, k, v, D**-0.5, True)
    delta = mx.sum(cot.astype(mx.float32) * out.astype(mx.float32), axis=-1)
    mx.eval(q, k, v, cot, out, lse, delta)
    smem = ck.bwd_sm90_smem_bytes(D, wg, qm)
    # the launcher passes shared memory at kernel creation; re-create per size
    fns = {}
    for name in SUBS:
        h = base
        for a, b in SUBS[name]:
            h = h.replace(a, b)
        kern = mx.fast.cuda_kernel(name=f"bwdpart_{name.replace('-', '_')}", input_names=list(ck._BWD_IO[0]),
                                   output_names=list(ck._BWD_IO[1]), source=ck._BWD_SM90_BODY, header=h, shared_memory=smem)
        def fn(kern=kern):
            return kern(inputs=[q, k, v, cot, lse, delta, mx.array([D**-0.5], dtype=mx.float32)],
                        template=[("T", q.dtype), ("HEAD_DIM", D), ("WARPGROUPS", wg), ("QTILES", qm), ("CAUSAL", True)],
                        grid=(-(-L // (64 * wg)) * 128 * wg, H, B), threadgroup=(128 * wg, 1, 1),
                        output_shapes=[q.shape, (B, H, L, D), (B, H, L, D)],
                        output_dtypes=[mx.float32] * 3, init_value=0.0)
        fns[name] = fn
    for fn in fns.values():
        for _ in range(3): mx.eval(fn())
    times = {n: [] for n in fns}
    for rep in range(5):
        for n, fn in fns.items():
            for _ in range(4):
                mx.synchronize(); t = time.perf_counter(); mx.eval(fn()); mx.synchronize()
                times[n].append(time.perf_counter() - t)
    # zero-fill of the three float32 outputs is inside every call; time it alone too
    def zeros():
        return [mx.zeros(q.shape, mx.float32) + 0 for _ in range(3)]
    flops = 2.5 * 4 * B * H * L * L * D / 2
    print(f"{lname} L={L} {(wg, qm)}: " + ", ".join(f"{n} {statistics.median(ts)*1e3:.3f} ms ({flops/statistics.median(ts)/1e12:.0f} TF/s)" for n, ts in times.items()), flush=True)
