# The pipelined wgmma forward vs the one before it (session 6), every allowed launch, kernel calls only.
# First: git show b5fe88b:flashtune/attention/kernels/flash_forward_sm90.cu > fwd_sm90_old.cu (beside this file).
import statistics, sys, time
from pathlib import Path
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
L_SET = tuple(int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "2048").split(","))
old_src = Path(__file__).with_name("fwd_sm90_old.cu").read_text()
# the old file's helpers clash with the new ones: keep only its kernel template
old_kernel = old_src[old_src.index("// Forward, grid (ceil(Lq / BM), Hq, B), 128 * WG threads"):]
old_header = ck._header() + "\nnamespace ftpoc_old {\nusing namespace ftpoc;\n" + old_kernel.replace("}  // namespace ftpoc", "}  // namespace ftpoc_old")
def old_forward(q, k, v, scale, causal, config):
    B, H, L, D = q.shape
    bn, wg, st = config
    kern = mx.fast.cuda_kernel(name="ftpoc_fwd_old", input_names=list(ck._FWD_IO[0]), output_names=list(ck._FWD_IO[1]),
                               source=ck._FWD_SM90_BODY.replace("ftpoc::flash_fwd_sm90", "ftpoc_old::flash_fwd_sm90_old"),
                               header=old_header, shared_memory=ck.fwd_sm90_smem_bytes(D, *config))
    return kern(inputs=[q, k, v, mx.array([scale], dtype=mx.float32)],
                template=[("T", q.dtype), ("HEAD_DIM", D), ("BLOCK_N", bn), ("WARPGROUPS", wg), ("STAGES", st), ("CAUSAL", causal)],
                grid=(-(-L // (64 * wg)) * 128 * wg, H, B), threadgroup=(128 * wg, 1, 1),
                output_shapes=[q.shape, (B, H, L)], output_dtypes=[q.dtype, mx.float32])
for name, (B, H, Hkv, D) in {"TinyLlama": (4, 32, 4, 64), "Qwen2.5-1.5B": (4, 12, 2, 128)}.items():
    for L in L_SET:
        ks = mx.random.split(mx.random.key(L), 3)
        q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
        k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
        v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
        mx.eval(q, k, v)
        fns = {}
        for cfg in ck.sm90_launches(D):
            fns[("new", cfg)] = lambda cfg=cfg: ck.forward(q, k, v, D**-0.5, True, config=cfg, kernel="sm90")
            fns[("old", cfg)] = lambda cfg=cfg: old_forward(q, k, v, D**-0.5, True, cfg)
        ref = ck.forward(q, k, v, D**-0.5, True, kernel="sm80")[0]
        errs = {}
        for key, fn in fns.items():
            out = fn()[0]; mx.eval(out)
            errs[key] = (mx.linalg.norm((out.astype(mx.float32) - ref.astype(mx.float32)).flatten()) / mx.linalg.norm(ref.astype(mx.float32).flatten())).item()
            for _ in range(2): mx.eval(fn())
        times = {key: [] for key in fns}
        for rep in range(5):
            for key, fn in fns.items():
                for _ in range(4):
                    mx.synchronize(); t = time.perf_counter(); mx.eval(fn()); mx.synchronize()
                    times[key].append(time.perf_counter() - t)
        flops = 4 * B * H * L * L * D / 2
        for key in fns:
            med = statistics.median(times[key])
            print(f"{name} L={L} {key[0]} {key[1]}: {med*1e3:.3f} ms {flops/med/1e12:.0f} TF/s err {errs[key]:.1e}", flush=True)
