# Wall time of the bench's compiled passes vs the GPU kernels they launch (ncu lists the kernels of one call).
import ctypes, os, statistics, sys, time
import flashtune  # noqa
import mlx.core as mx
from flashtune.attention import get
from flashtune.bench.attention import _compiled_passes
impl, layout, mode = sys.argv[1:4]
B, H, Hkv, D = (4, 32, 4, 64) if layout == "tiny" else (4, 12, 2, 128)
L = int(os.environ.get("GAPS_L", "2048"))
ks = mx.random.split(mx.random.key(1), 4)
q = mx.random.normal((B, H, L, D), key=ks[0]).astype(mx.bfloat16)
k = mx.random.normal((B, Hkv, L, D), key=ks[1]).astype(mx.bfloat16)
v = mx.random.normal((B, Hkv, L, D), key=ks[2]).astype(mx.bfloat16)
cot = mx.random.normal((B, H, L, D), key=ks[3]).astype(mx.bfloat16)
mx.eval(q, k, v, cot)
if impl == "null":  # the fixed cost of one custom-kernel call in a compiled graph
    null = mx.fast.cuda_kernel(name="null", input_names=["q"], output_names=["o"], source="if (threadIdx.x == 0) o[0] = 1.f;")
    forward = mx.compile(lambda q, k, v: null(inputs=[q], grid=(32, 1, 1), threadgroup=(32, 1, 1), output_shapes=[(1,)], output_dtypes=[mx.float32])[0])
elif impl == "nullmlx":  # ... and of one small MLX op
    forward = mx.compile(lambda q, k, v: q[0, 0, 0, :1] * 2)
else:
    forward, backward = _compiled_passes(get(impl), D**-0.5, "causal")
run = (lambda: mx.eval(forward(q, k, v))) if mode == "fwd" else (lambda: mx.eval(backward(q, k, v, cot)))
for _ in range(5):
    run()
mx.synchronize()
times = []
for _ in range(20):
    t = time.perf_counter(); run(); mx.synchronize(); times.append(time.perf_counter() - t)
print(f"WALL {impl} {layout} L={L} {mode}: {statistics.median(times)*1e3:.3f} ms", flush=True)
if os.environ.get("GAPS_PROFILE"):
    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuProfilerStart(); run(); mx.synchronize(); cuda.cuProfilerStop()
