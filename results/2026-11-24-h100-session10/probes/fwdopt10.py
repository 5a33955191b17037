# Session 10: OPT switches of the persistent wgmma forward (bit 0: rescale O under S, before
# P V is issued, as FA3; bit 1: a shared store keeps the exponentials above the P V wait),
# kernel calls in one process, against cuDNN. Usage: python fwdopt10.py L,L OPTS
import statistics, sys, time
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
L_SET = tuple(int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "2048,4096").split(","))
OPTS = tuple(int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2,3").split(","))
body = ck._FWD_SM90_BODY.replace("CAUSAL>(", "CAUSAL, OPT>(")
def fwd(q, k, v, s, opt, cfg, ctas):
    B, H, L, D = q.shape
    bn, wg, st = cfg
    tiles = -(-L // (64 * wg)) * H * B
    ctas = min(tiles, ctas or tiles)
    return ck._kernel("ftpoc_fwd_opt", body, ck._FWD_IO, ck.fwd_sm90_smem_bytes(D, *cfg), ck._FWD_SM90)(
        inputs=[q, k, v, mx.array([s], dtype=mx.float32)],
        template=[("T", q.dtype), ("HEAD_DIM", D), ("BLOCK_N", bn), ("WARPGROUPS", wg), ("STAGES", st), ("CAUSAL", True), ("OPT", opt)],
        grid=(ctas * 128 * wg, 1, 1), threadgroup=(128 * wg, 1, 1),
        output_shapes=[q.shape, (B, H, L)], output_dtypes=[q.dtype, mx.float32])
for name, (B, H, Hkv, D) in {"TinyLlama": (4, 32, 4, 64), "Qwen2.5-1.5B": (4, 12, 2, 128)}.items():
    cfg = ck.FWD_SM90_CONFIG[D]
    ctas = ck.resident_sm90_ctas(D, *cfg) if D in ck.FWD_SM90_PERSISTENT else None
    for L in L_SET:
        ks = mx.random.split(mx.random.key(L), 3)
        q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
        k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
        v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
        mx.eval(q, k, v)
        s = D ** -0.5
        fns = {"cudnn": lambda: (mx.fast.scaled_dot_product_attention(q, k, v, scale=s, mask="causal"),)}
        for opt in OPTS:
            fns[f"opt {opt}"] = lambda opt=opt: fwd(q, k, v, s, opt, cfg, ctas)
        ref, ref_lse = ck.forward(q, k, v, s, True, kernel="sm80")
        ref = ref.astype(mx.float32)
        errs = {}
        for key, fn in fns.items():
            res = fn()
            out = res[0].astype(mx.float32)
            errs[key] = (mx.linalg.norm((out - ref).flatten()) / mx.linalg.norm(ref.flatten())).item()
            if len(res) > 1:
                errs[key] = max(errs[key], mx.max(mx.abs(res[1] - ref_lse)).item())
            for _ in range(3): mx.eval(fn())
        t1 = {key: [] for key in fns}; t10 = {key: [] for key in fns}
        for rep in range(6):
            for key, fn in fns.items():
                for _ in range(3):
                    mx.synchronize(); t = time.perf_counter(); mx.eval(fn()); mx.synchronize()
                    t1[key].append(time.perf_counter() - t)
                mx.synchronize(); t = time.perf_counter()
                for _ in range(10): mx.eval(fn())
                mx.synchronize(); t10[key].append((time.perf_counter() - t) / 10)
        flops = 4 * B * H * L * L * D / 2
        base1, base10 = statistics.median(t1["cudnn"]), statistics.median(t10["cudnn"])
        b1, b10 = statistics.median(t1[f"opt {OPTS[0]}"]), statistics.median(t10[f"opt {OPTS[0]}"])
        for key in fns:
            m1, m10 = statistics.median(t1[key]), statistics.median(t10[key])
            print(f"{name} L={L} {key:8s} 1: {m1*1e3:.3f} ms cudnn/this {base1/m1:.2f} | x10: {m10*1e3:.3f} ms {flops/m10/1e12:.0f} TF/s cudnn/this {base10/m10:.2f} opt{OPTS[0]}/this {b10/m10:.2f} | err {errs[key]:.1e}", flush=True)
