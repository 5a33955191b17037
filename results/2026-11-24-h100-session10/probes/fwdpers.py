# Session 10: the persistent wgmma forward vs one CTA per tile vs session 9's kernel vs cuDNN.
# Kernel calls only; "1" = one call then synchronize (what the benchmark sees), "x10" = ten
# calls, one synchronize, per call. Usage: python fwdpers.py L,L,...
import statistics, sys, time
from pathlib import Path
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
L_SET = tuple(int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "2048,4096").split(","))
src = Path(__file__).with_name("fwd_sm90_s9.cu").read_text()
old_kernel = src[src.index("// Forward, grid (ceil(Lq / BM), Hq, B)"):].replace("}  // namespace ftpoc", "}  // namespace ftpoc_old")
old_header = ck.header(ck._FWD_SM90) + "\nnamespace ftpoc_old {\nusing namespace ftpoc;\n" + old_kernel
old_body = """
    ftpoc_old::flash_fwd_sm90<T, HEAD_DIM, BLOCK_N, WARPGROUPS, STAGES, CAUSAL>(
        q, k, v, params, q_shape[1], q_shape[2], k_shape[1], k_shape[2], out, lse);
"""
def old_forward(q, k, v, scale, config):
    B, H, L, D = q.shape
    bn, wg, st = config
    kern = ck._kernel("ftpoc_fwd_s9", old_body, ck._FWD_IO, ck.fwd_sm90_smem_bytes(D, *config), ())
    return kern(inputs=[q, k, v, mx.array([scale], dtype=mx.float32)],
                template=[("T", q.dtype), ("HEAD_DIM", D), ("BLOCK_N", bn), ("WARPGROUPS", wg), ("STAGES", st), ("CAUSAL", True)],
                grid=(-(-L // (64 * wg)) * 128 * wg, H, B), threadgroup=(128 * wg, 1, 1),
                output_shapes=[q.shape, (B, H, L)], output_dtypes=[q.dtype, mx.float32])
# ck._kernel takes files; give it the old header through a one-off subclass of the lookup
_orig_header = ck.header
ck.header = lambda files=ck.ALL_SOURCES: old_header if files == () else _orig_header(files)
print("SMs:", ck.sm_count(), flush=True)
for name, (B, H, Hkv, D) in {"TinyLlama": (4, 32, 4, 64), "Qwen2.5-1.5B": (4, 12, 2, 128)}.items():
    for L in L_SET:
        ks = mx.random.split(mx.random.key(L), 3)
        q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
        k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
        v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
        mx.eval(q, k, v)
        s = D ** -0.5
        fns = {"cudnn": lambda: (mx.fast.scaled_dot_product_attention(q, k, v, scale=s, mask="causal"),)}
        cfgs = [ck.FWD_SM90_CONFIG[D]] + ([(64, 2, 3)] if D == 128 else [(64, 1, 3)])
        for cfg in cfgs:
            res = ck.resident_sm90_ctas(D, *cfg)
            if cfg == ck.FWD_SM90_CONFIG[D]:
                fns[f"s9 {cfg}"] = lambda cfg=cfg: old_forward(q, k, v, s, cfg)
            fns[f"tiles {cfg}"] = lambda cfg=cfg: ck.forward(q, k, v, s, True, config=cfg, kernel="sm90", ctas=10**9)
            fns[f"pers {cfg} {res}"] = lambda cfg=cfg, res=res: ck.forward(q, k, v, s, True, config=cfg, kernel="sm90", ctas=res)
        ref = ck.forward(q, k, v, s, True, kernel="sm80")[0].astype(mx.float32)
        errs = {}
        for key, fn in fns.items():
            out = fn()[0].astype(mx.float32)
            errs[key] = (mx.linalg.norm((out - ref).flatten()) / mx.linalg.norm(ref.flatten())).item()
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
        for key in fns:
            m1, m10 = statistics.median(t1[key]), statistics.median(t10[key])
            print(f"{name} L={L} {key:28s} 1: {m1*1e3:.3f} ms cudnn/this {base1/m1:.2f} | x10: {m10*1e3:.3f} ms {flops/m10/1e12:.0f} TF/s cudnn/this {base10/m10:.2f} | err {errs[key]:.1e}", flush=True)
