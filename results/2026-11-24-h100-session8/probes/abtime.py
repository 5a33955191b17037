# The kernels in old/ (another commit's, copied there) vs the working tree, same process, interleaved:
# forward and backward kernel calls (uncompiled, eval per call), with cuDNN's forward beside.
# Usage: python3 abtime.py [L list]
import functools, statistics, sys, time
from pathlib import Path
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention.kernels import cuda as ck
L_SET = tuple(int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "2048,4096").split(","))
old_dir = Path(__file__).with_name("old")
OLD = "\n".join((old_dir / n).read_text() for n in ("flash_attention.cu", "flash_forward_sm90.cu", "flash_backward_sm90.cu"))
def make(which):
    @functools.lru_cache(maxsize=None)
    def kernel(name, body, io, smem):
        return mx.fast.cuda_kernel(name=name + ("_old" if which == "old" else ""), input_names=list(io[0]),
                                   output_names=list(io[1]), source=body,
                                   header=OLD if which == "old" else ck._header(), shared_memory=smem)
    return kernel
KERNELS = {"old": make("old"), "new": make("new")}
def using(which, fn):
    ck._kernel = KERNELS[which]
    return fn()
def rel(a, b):
    a, b = a.astype(mx.float32), b.astype(mx.float32)
    return (mx.linalg.norm((a - b).flatten()) / mx.linalg.norm(b.flatten())).item()
for name, (B, H, Hkv, D) in {"TinyLlama": (4, 32, 4, 64), "Qwen2.5-1.5B": (4, 12, 2, 128)}.items():
    for L in L_SET:
        ks = mx.random.split(mx.random.key(L), 4)
        q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
        k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
        v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
        do = mx.random.normal((B, H, L, D), key=ks[3]).astype(mx.bfloat16)
        mx.eval(q, k, v, do)
        s = D ** -0.5
        out, lse = using("old", lambda: ck.forward(q, k, v, s, True)); mx.eval(out, lse)
        fns = {("fwd", "cudnn"): lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=s, mask="causal")}
        for w in ("old", "new"):
            fns[("fwd", w)] = lambda w=w: using(w, lambda: ck.forward(q, k, v, s, True))
            fns[("bwd", w)] = lambda w=w: using(w, lambda: ck.backward(q, k, v, out, lse, do, s, True))
        res = {key: fn() for key, fn in fns.items()}
        mx.eval(res)
        print(f"{name} L={L}: new vs old fwd out {rel(res[('fwd','new')][0], res[('fwd','old')][0]):.1e} "
              f"lse {mx.max(mx.abs(res[('fwd','new')][1] - res[('fwd','old')][1])).item():.1e}; "
              + " ".join(f"d{n} {rel(res[('bwd','new')][i], res[('bwd','old')][i]):.1e}" for i, n in enumerate("qkv")), flush=True)
        for key, fn in fns.items():
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
            print(f"  {name} L={L} {key[0]} {key[1]}: {med[key]*1e3:.3f} ms {flops * (2.5 if key[0] == 'bwd' else 1) / med[key] / 1e12:.0f} TF/s", flush=True)
        print(f"  {name} L={L} fwd cudnn/old {med[('fwd','cudnn')]/med[('fwd','old')]:.2f} cudnn/new {med[('fwd','cudnn')]/med[('fwd','new')]:.2f}; "
              f"bwd old/new {med[('bwd','old')]/med[('bwd','new')]:.2f}", flush=True)
