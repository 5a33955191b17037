"""One-call GPU check of poc's CUDA kernels: correctness sweep vs float64, then timings.

On a machine with an NVIDIA GPU and MLX's CUDA build:
    python scripts/poc_gpu_check.py --out OUT
prints the environment, a table of relative errors (poc kernels and a naive bf16 run, both
vs float64), and a timing table of poc vs demo (cuDNN) vs baseline, bf16 causal, forward and
forward+backward, TinyLlama and Qwen2.5-1.5B attention layouts; JSONL lands in --out.
Without a GPU, ``--nvcc`` builds every kernel variant with nvcc as MLX would (sm_90a) and
prints ptxas's resource report (registers, spills, shared memory).
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention import get
from flashtune.attention.kernels import cuda as cuda_kernels
from flashtune.attention.kernels import cuda_source

LAYOUTS = {  # name: (B, n_heads, n_kv_heads, head_dim)
    "TinyLlama": (4, 32, 4, 64),
    "Qwen2.5-1.5B": (4, 12, 2, 128),
}
LENGTHS = [512, 1000, 1024, 2048, 2000, 4096]
IMPLS = ["poc", "demo", "baseline"]


def load_test_module():
    """The CUDA kernel tests of a source checkout (this check reuses their cases and reference)."""
    path = Path(__file__).resolve().parents[2] / "tests" / "attention" / "test_poc_cuda.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: the GPU check runs from a source checkout of flashtune")
    spec = importlib.util.spec_from_file_location("test_poc_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def environment() -> dict:
    info = {
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "cuda": mx.cuda.is_available(),
    }
    try:
        info["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        info["gpu"] = f"nvidia-smi failed: {error}"
    return info


def correctness(test, log):
    """Relative errors of the kernels over a sweep; returns the number of failures."""
    failures = 0
    cases = []
    for dtype in (mx.bfloat16, mx.float16):
        dims = (32, 64, 80, 96, 128) if dtype == mx.bfloat16 else (64, 128)
        for D in dims:
            for causal in (True, False):
                shapes = test.SHAPES if D in (64, 128) else test.SHAPES[1:5]
                for shape in shapes:
                    if causal and shape[3] > shape[4]:
                        continue
                    cases.append((dtype, D, causal, shape))
    log(
        f"\n## Correctness: {len(cases)} cases, relative L2 error vs float64 "
        f"(tolerance bf16 {test.TOLERANCE[mx.bfloat16]}, fp16 {test.TOLERANCE[mx.float16]})"
    )
    log("| dtype | D | mask | (B, Hq, Hkv, Lq, Lk) | out | dq | dk | dv | ok |")
    log("|---|---|---|---|---|---|---|---|---|")
    for dtype, D, causal, shape in cases:
        start = time.perf_counter()
        try:
            errors = test.kernel_errors(shape, D, dtype, causal)
            ok = all(e <= test.TOLERANCE[dtype] for e in errors.values())
            cells = " | ".join(f"{errors[n]:.2e}" for n in ("out", "dq", "dk", "dv"))
        except Exception as error:
            ok, cells = False, f"ERROR {type(error).__name__}: {str(error)[:300]} | | |"
        failures += not ok
        name = "bf16" if dtype == mx.bfloat16 else "fp16"
        log(
            f"| {name} | {D} | {'causal' if causal else 'none'} | {shape} | {cells} | "
            f"{'yes' if ok else 'NO'} | ({time.perf_counter() - start:.1f} s)"
        )
    # What a naive bf16 computation gets wrong, for scale (FlashAttention's rule of thumb).
    baseline = get("baseline")
    for shape in [(2, 8, 2, 1000, 1000), (1, 4, 4, 1000, 1000)]:
        for D in (64, 128):
            q, k, v, cot = test.random_inputs(shape, D, mx.bfloat16, 0)
            (out,), grads = mx.vjp(lambda *a: baseline(*a, scale=D**-0.5, mask="causal"), [q, k, v], [cot])
            want = test.reference(q, k, v, cot, D**-0.5, True)
            errs = [test.ref.relative_error(g, w) for g, w in zip([out, *grads], want)]
            mine = test.kernel_errors(shape, D, mx.bfloat16, True)
            log(
                f"naive bf16 baseline {shape} D={D} causal: out {errs[0]:.2e} dq {errs[1]:.2e} "
                f"dk {errs[2]:.2e} dv {errs[3]:.2e}; poc: " + " ".join(f"{n} {e:.2e}" for n, e in mine.items())
            )
    return failures


def timed(fn, budget_s=1.0, max_iter=30):
    """Median seconds of fn() (forced with mx.eval) after warm-up."""
    for _ in range(3):
        mx.eval(fn())
    start = time.perf_counter()
    mx.eval(fn())
    first = time.perf_counter() - start
    n = int(min(max_iter, max(5, budget_s / max(first, 1e-6))))
    times = []
    for _ in range(n):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def causal_flops(B, n_heads, L, D):
    return 4 * B * n_heads * L * L * D / 2


def timing(log, deadline, out_dir):
    """poc vs demo vs baseline; returns rows (dicts)."""
    rows = []
    log(
        "\n## Timing: bf16, causal, median ms (TFLOP/s), causal FLOPs 4·B·H·L²·D/2, "
        "fwd+bwd 3.5x; ratio = demo time / poc time"
    )
    log(
        "| layout | L | mode | poc ms (TF/s) | demo ms (TF/s) | baseline ms (TF/s) | poc/demo speed "
        "| peak MB poc/demo/baseline | poc vs demo rel err |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    for layout, (B, n_heads, n_kv_heads, D) in LAYOUTS.items():
        for L in LENGTHS:
            keys = mx.random.split(mx.random.key(L), 4)
            q = mx.random.normal((B, n_heads, L, D), key=keys[0]).astype(mx.bfloat16)
            k = mx.random.normal((B, n_kv_heads, L, D), key=keys[1]).astype(mx.bfloat16)
            v = mx.random.normal((B, n_kv_heads, L, D), key=keys[2]).astype(mx.bfloat16)
            cot = mx.random.normal(q.shape, key=keys[3]).astype(mx.bfloat16)
            mx.eval(q, k, v, cot)
            scale = D**-0.5
            outs = {}
            for mode in ("fwd", "fwd+bwd"):
                if time.time() > deadline:
                    log(f"(deadline reached: skipped {layout} L={L} {mode} and after)")
                    return rows
                result = {}
                for name in IMPLS:
                    fn = get(name)
                    if mode == "fwd":

                        def run(fn=fn):
                            return fn(q, k, v, scale=scale, mask="causal")
                    else:

                        def run(fn=fn):
                            return mx.vjp(lambda *a: fn(*a, scale=scale, mask="causal"), [q, k, v], [cot])

                    try:
                        mx.eval(run())
                        mx.reset_peak_memory()
                        res = run()
                        mx.eval(res)
                        peak = mx.get_peak_memory() / 2**20
                        if mode == "fwd":
                            outs[name] = res
                        seconds = timed(run)
                        flops = causal_flops(B, n_heads, L, D) * (1 if mode == "fwd" else 3.5)
                        result[name] = (seconds, flops / seconds / 1e12, peak)
                    except Exception as error:
                        log(f"{name} {layout} L={L} {mode}: {type(error).__name__}: {error}")
                        result[name] = (float("nan"), float("nan"), float("nan"))
                err = float("nan")
                if "poc" in outs and "demo" in outs:
                    a, b = outs["poc"].astype(mx.float32), outs["demo"].astype(mx.float32)
                    err = (mx.linalg.norm(a - b) / mx.linalg.norm(b)).item()
                cells = " | ".join(f"{result[n][0] * 1e3:.2f} ({result[n][1]:.0f})" for n in IMPLS)
                speed = result["demo"][0] / result["poc"][0]
                peaks = "/".join(f"{result[n][2]:.0f}" for n in IMPLS)
                log(f"| {layout} | {L} | {mode} | {cells} | {speed:.2f}x | {peaks} | {err:.1e} |")
                row = dict(
                    layout=layout,
                    B=B,
                    n_heads=n_heads,
                    n_kv_heads=n_kv_heads,
                    head_dim=D,
                    L=L,
                    mode=mode,
                    poc_vs_demo_rel_err=err,
                )
                for n in IMPLS:
                    row[f"{n}_ms"] = result[n][0] * 1e3
                    row[f"{n}_tflops"] = result[n][1]
                    row[f"{n}_peak_mb"] = result[n][2]
                rows.append(row)
                with open(out_dir / "poc_timing.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def variants(log, deadline, lengths=(2048,)):
    """Kernel-only timings of launch shapes (cuda.FWD_CONFIG / FWD_SM90_CONFIG / BWD_WARPS candidates)."""
    log("\n## Warp-count variants, bf16 causal, kernels only, median ms")
    for layout, (B, n_heads, n_kv_heads, D) in LAYOUTS.items():
        for L in lengths:
            keys = mx.random.split(mx.random.key(7), 4)
            q = mx.random.normal((B, n_heads, L, D), key=keys[0]).astype(mx.bfloat16)
            k = mx.random.normal((B, n_kv_heads, L, D), key=keys[1]).astype(mx.bfloat16)
            v = mx.random.normal((B, n_kv_heads, L, D), key=keys[2]).astype(mx.bfloat16)
            cot = mx.random.normal(q.shape, key=keys[3]).astype(mx.bfloat16)
            out, lse = cuda_kernels.forward(q, k, v, D**-0.5, True)
            mx.eval(out, lse)
            launches = [("sm80", c) for c in ((4, 1), (4, 2), (8, 1), (8, 2))]
            if cuda_kernels.is_sm90():
                launches += [("sm90", config) for config in cuda_kernels.sm90_launches(D)]
            for kernel, config in launches:
                if time.time() > deadline:
                    return
                t = timed(lambda: cuda_kernels.forward(q, k, v, D**-0.5, True, config=config, kernel=kernel))
                what = "(warps, row tiles)" if kernel == "sm80" else "(keys per tile, warpgroups, stages)"
                log(
                    f"{layout} L={L} forward {kernel} {what}={config}: {t * 1e3:.3f} ms "
                    f"({causal_flops(B, n_heads, L, D) / t / 1e12:.0f} TF/s)"
                )
            for nw in (4, 8) if D == 64 else (4,):  # 8 warps at D=128: over 227 KB of smem
                if time.time() > deadline:
                    return
                for grouped_min in (10**9, 0):
                    cuda_kernels.GROUPED_MIN_CTAS = grouped_min
                    t = timed(
                        lambda: cuda_kernels.backward(q, k, v, out, lse, cot, D**-0.5, True, n_warps=nw, kernel="sm80")
                    )
                    log(
                        f"{layout} L={L} backward sm80 NW={nw} "
                        f"{'per-q-head' if grouped_min else 'grouped'}: {t * 1e3:.3f} ms "
                        f"({2.5 * causal_flops(B, n_heads, L, D) / t / 1e12:.0f} TF/s)"
                    )
            cuda_kernels.GROUPED_MIN_CTAS = 10**9
            for config in cuda_kernels.bwd_sm90_launches(D) if cuda_kernels.is_sm90() else []:
                if time.time() > deadline:
                    return
                t = timed(
                    lambda: cuda_kernels.backward(q, k, v, out, lse, cot, D**-0.5, True, kernel="sm90", config=config)
                )
                log(
                    f"{layout} L={L} backward sm90 (warpgroups, query row tiles)={config}: "
                    f"{t * 1e3:.3f} ms ({2.5 * causal_flops(B, n_heads, L, D) / t / 1e12:.0f} TF/s)"
                )


NVCC_KINDS = ("fwd", "fwd_sm90", "bwd", "bwd_sm90", "fwd_seg", "bwd_seg")  # *_seg: packed rows


def nvcc_report(log, kinds=NVCC_KINDS):
    """Builds each kernel variant of ``kinds`` as MLX would (sm_90a) and prints ptxas's resource report."""
    mlx_src = os.environ.get("MLX_SRC", "/tmp/mlxsrc")  # a checkout holding mlx/backend/cuda
    header = cuda_source.header()
    work = Path("/tmp/poc_nvcc")
    work.mkdir(exist_ok=True)
    launches = {
        "fwd": [(4, 1), (4, 2), (8, 2)],
        "bwd": [(4, 1), (8, 1)],
        "fwd_sm90": [(64, 1), (128, 1), (64, 2), (128, 2)],
    }  # sm90: (BLOCK_N, WARPGROUPS)
    launches.update(fwd_seg=launches["fwd"], bwd_seg=launches["bwd"])
    entry_points = {
        "fwd": (cuda_source.FWD_BODY, cuda_source.FWD_IO),
        "bwd": (cuda_source.BWD_BODY, cuda_source.BWD_IO),
        "fwd_sm90": (cuda_source.FWD_SM90_BODY, cuda_source.FWD_IO),
        "bwd_sm90": (cuda_source.BWD_SM90_BODY, cuda_source.BWD_IO),
        "fwd_seg": (cuda_source.FWD_SEG_BODY, cuda_source.FWD_SEG_IO),
        "bwd_seg": (cuda_source.BWD_SEG_BODY, cuda_source.BWD_SEG_IO),
    }
    labels = {"fwd_sm90": "BLOCK_N={} WARPGROUPS={}", "bwd_sm90": "WARPGROUPS={} QTILES={}"}
    for kind in kinds:
        for D in cuda_kernels.HEAD_DIMS:
            if kind == "fwd_sm90" and D not in cuda_kernels.FWD_SM90_CONFIG:
                continue
            # bwd_sm90: (WARPGROUPS, QTILES)
            shapes = cuda_kernels.bwd_sm90_launches(D) if kind == "bwd_sm90" else launches[kind]
            for nw, mt in shapes:
                body, (ins, outs) = entry_points[kind]
                types = {"params": "float", "lse": "float", "delta": "float", "segments": "int32_t"}
                sig = []
                for n in ins:
                    sig.append(f"const {types.get(n, 'T')}* {n}")
                    if n in ("q", "k"):
                        sig.append(f"const __grid_constant__ Shape {n}_shape")
                out_types = {"out": "T"}
                sig += [f"{out_types.get(n, 'float')}* {n}" for n in outs]
                src = (
                    '#include "mlx/backend/cuda/device/utils.cuh"\n#include <cooperative_groups.h>\n'
                    + header
                    + "\nnamespace mlx::core::cu {\nusing T = __nv_bfloat16;\n"
                    + f"__global__ void k_{kind}({', '.join(sig)}) {{\n"
                    + f"constexpr int HEAD_DIM = {D}; constexpr int NWARPS = {nw}; "
                    + f"constexpr int MTILES = {mt}; constexpr int BLOCK_N = {nw}; "
                    + f"constexpr int WARPGROUPS = {nw if kind == 'bwd_sm90' else mt}; "
                    + f"constexpr int QTILES = {mt}; constexpr int STAGES = 3; "  # the wgmma forward takes 3 buffers
                    + "constexpr bool CAUSAL = true;\n"
                    + body
                    + "}\n}\n"
                )
                path = work / f"{kind}_{D}_{nw}_{mt}.cu"
                path.write_text(src)
                result = subprocess.run(
                    [
                        "nvcc",
                        "-std=c++17",
                        f"-I{mlx_src}",
                        "-gencode=arch=compute_90a,code=sm_90a",
                        "-Xptxas",
                        "-v",
                        "-c",
                        str(path),
                        "-o",
                        str(path.with_suffix(".o")),
                    ],
                    capture_output=True,
                    text=True,
                )
                report = [
                    line.split("info    : ")[-1].strip()
                    for line in result.stderr.splitlines()
                    if "registers" in line or "spill" in line or "error" in line
                ]
                if shutil.which("cuobjdump") and result.returncode == 0:  # which tensor-core path
                    sass = subprocess.run(
                        ["cuobjdump", "--dump-sass", str(path.with_suffix(".o"))], capture_output=True, text=True
                    ).stdout
                    report.append(f"SASS HGMMA {sass.count('HGMMA')}, HMMA {sass.count('HMMA')}")
                label = labels.get(kind, "warps={} tiles={}").format(nw, mt)
                log(f"{kind} D={D} {label}: " + "; ".join(report))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), type=Path)
    parser.add_argument("--budget-s", type=float, default=420, help="stop timing after this")
    parser.add_argument("--nvcc", action="store_true", help="only build with nvcc (no GPU)")
    parser.add_argument(
        "--nvcc-kinds", default=",".join(NVCC_KINDS), help=f"with --nvcc: entry points to build (default: {NVCC_KINDS})"
    )
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument(
        "--variant-lengths", default="2048", help="comma-separated sequence lengths for the launch-shape timings"
    )
    args = parser.parse_args()
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "poc_gpu_check.md", "a")

    def log(line=""):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    if args.nvcc:
        nvcc_report(log, tuple(args.nvcc_kinds.split(",")))
        return 0
    info = environment()
    log(f"# poc GPU check {time.strftime('%Y-%m-%d %H:%M:%S')}\n{json.dumps(info)}")
    with open(args.out / "poc_timing.jsonl", "a") as f:
        f.write(json.dumps({"run_info": info}) + "\n")
    if not mx.cuda.is_available():
        log("no CUDA device: nothing to check (use --nvcc for a build-only report)")
        return 1
    failures = 0
    if not args.skip_correctness:
        failures = correctness(load_test_module(), log)
        log(f"\ncorrectness failures: {failures}  ({time.time() - start:.0f} s so far)")
    deadline = start + args.budget_s
    timing(log, deadline, args.out)
    variants(log, deadline, [int(x) for x in args.variant_lengths.split(",")])
    log(f"\ntotal {time.time() - start:.0f} s; correctness failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
