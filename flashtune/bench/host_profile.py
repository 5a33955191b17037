"""Where the host's time goes in a LoRA training run on a GPU, where steps are bound by dispatch
(the host encodes ~1,660 kernels per TinyLlama 4x1024 step) rather than by the GPU.

    python scripts/host_profile.py first-step [--model M --tokenizer DIR --batch 4 --length 1024]
    python scripts/host_profile.py op-costs
    python scripts/host_profile.py graph
    py-spy record --native -r 500 -f raw -o steady.txt -- python scripts/host_profile.py steady --steps 150
    python scripts/host_profile.py summarize steady.txt

first-step: a process's first steps, as the trainer runs them (validation forward, then the
  compiled step): trace (the call returns) / dispatch (mx.async_eval returns) / wait, for step 1,
  step 2, a steady step and a new batch shape; then what a new shape costs by kind: a cuDNN SDPA
  forward+backward, a cuBLAS matmul, a 1 GB allocation (first call vs second). JSON on stdout.
op-costs: host microseconds per op when a compiled function of 200 independent ops of one kind is
  traced (call) and dispatched (async_eval), per kind (LoRA-shaped matmuls, elementwise, cast,
  reduction, RMSNorm, concatenation).
graph: how many nodes of each primitive the compiled step's graph has (views marked).
steady: pipelined steps of the trainer's step (demo, fused projections), for a sampling profiler;
  summarize: the share of samples inside that loop per native frame (py-spy's raw format), and
  which primitive's eval_gpu each sample of MLX's gpu::eval was in.
"""

import argparse
import collections
import json
import statistics
import sys
import time

import mlx.core as mx

import flashtune  # noqa: F401  (before mlx: loads the BLAS)
from flashtune import models
from flashtune.bench.profile_step import VIEW_PRIMITIVES, fresh_step, graph_primitives, pipelined_ms
from flashtune.patch import patch
from flashtune.train.fused_projections import fuse_projections
from flashtune.train.lora import adapter_config, apply_lora
from flashtune.train.step import loss_sum


def build(args):
    """The trainer's model for timing: random init, LoRA on the last 16 blocks (mixed precision), demo
    attention, fused projections, parameters materialized."""
    model, _, info = models.load_model(args.model, init="random", tokenizer=args.tokenizer)
    apply_lora(model, adapter_config(min(16, len(model.layers)), 8, 20.0, 0.0), "mixed")  # the recipes' 16
    patch(model, "demo")
    fuse_projections(model)
    mx.eval(model.parameters())
    return model, info


def random_batch(info, batch, length, seed):
    mx.random.seed(seed)
    tokens = mx.random.randint(0, info.config["vocab_size"], (batch, length + 1))
    mx.eval(tokens)
    return tokens[:, :-1], tokens[:, 1:], mx.ones((batch, length))


class Clock:
    """Milliseconds between successive laps, by name."""

    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def reset(self):
        self._last = time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self.laps[name] = round(1e3 * (now - self._last), 1)
        self._last = now


def first_step(args):
    model, info = build(args)
    B, L = args.batch, args.length
    batch = random_batch(info, B, L, 1)
    clock = Clock()
    model.eval()
    mx.eval(loss_sum(model, *batch))
    clock.lap("validation forward, first")
    mx.eval(loss_sum(model, *batch))
    clock.lap("validation forward, second")
    model.train()
    step, state = fresh_step(model)

    def timed_step(label, inputs):
        clock.reset()
        out = step(*inputs)
        clock.lap(f"{label}: trace")
        mx.async_eval(out, state)
        clock.lap(f"{label}: dispatch")
        mx.eval(out, state)
        clock.lap(f"{label}: wait")

    timed_step("step 1", batch)
    timed_step("step 2", batch)
    for _ in range(3):
        mx.eval(step(*batch), state)
    timed_step("steady step", batch)
    timed_step(f"new shape {B}x{L - L // 8}", random_batch(info, B, L - L // 8, 2))

    # What one new shape costs by kind: the first call builds its plans, the second is steady.
    heads, kv_heads, D, L_new = (
        model.args.num_attention_heads,
        model.args.num_key_value_heads,
        model.args.hidden_size // model.args.num_attention_heads,
        L + 128,
    )
    q = mx.random.normal((B, heads, L_new, D)).astype(mx.bfloat16)
    kv = mx.random.normal((B, kv_heads, L_new, D)).astype(mx.bfloat16)
    sdpa_grad = mx.grad(
        lambda q, k, v: (
            mx.fast.scaled_dot_product_attention(q, k, v, scale=D**-0.5, mask="causal").astype(mx.float32).sum()
        ),
        argnums=(0, 1, 2),
    )
    x = mx.random.normal((B * L_new, model.args.hidden_size)).astype(mx.bfloat16)
    w = mx.random.normal((model.args.hidden_size, model.args.hidden_size + 512)).astype(mx.bfloat16)
    mx.eval(q, kv, x, w)
    probes = {
        f"cuDNN SDPA fwd+bwd, new shape {B}x{heads}x{L_new}x{D}": lambda: sdpa_grad(q, kv, kv),
        "matmul, new shape": lambda: x @ w,
    }
    for name, fn in probes.items():
        for call in ("first", "second"):
            clock.reset()
            mx.eval(fn())
            clock.lap(f"{name}: {call} call")
    mx.clear_cache()
    for call in ("first", "second"):
        clock.reset()
        buffer = mx.ones((2**28,))
        mx.eval(buffer)
        clock.lap(f"1 GB allocation (cache cleared): {call} call")
        del buffer
    print(json.dumps({"model": args.model, "batch": B, "length": L, "ms": clock.laps}, indent=1))


def op_costs(args):
    n = args.ops
    x = mx.random.normal((4096, 2048)).astype(mx.bfloat16)
    lora_a = [mx.random.normal((2048, 8)).astype(mx.bfloat16) for _ in range(n)]
    narrow = [mx.random.normal((4096, 8)).astype(mx.bfloat16) for _ in range(n)]
    weights = [mx.random.normal((2048,)).astype(mx.bfloat16) for _ in range(n)]
    mx.eval(x, lora_a, narrow, weights)
    kinds = {
        "matmul 4096x2048 @ 2048x8 (LoRA down)": lambda: [x @ a for a in lora_a],
        "matmul 4096x8 @ 8x2048 (LoRA up)": lambda: [h @ lora_a[0].T for h in narrow],
        "matmul 2048x4096 @ 4096x8 (LoRA gradient)": lambda: [x.T @ h for h in narrow],
        "elementwise (one fused kernel)": lambda: [h * 2 + 1 for h in narrow],
        "cast to float32": lambda: [h.astype(mx.float32) for h in narrow],
        "sum over rows": lambda: [h.sum(axis=0) for h in narrow],
        "rms_norm 4096x2048": lambda: [mx.fast.rms_norm(x, w, 1e-5) for w in weights],
        "concatenate two 4096x8": lambda: [mx.concatenate([narrow[i], narrow[i - 1]], axis=1) for i in range(n)],
    }
    rows = {}
    for name, fn in kinds.items():
        compiled = mx.compile(fn)
        for _ in range(3):
            mx.eval(compiled())
        calls, dispatches = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = compiled()
            traced = time.perf_counter()
            mx.async_eval(out)
            dispatched = time.perf_counter()
            mx.synchronize()
            calls.append(traced - start)
            dispatches.append(dispatched - traced)
        rows[name] = {
            "call_us_per_op": round(1e6 * statistics.median(calls) / n, 2),
            "dispatch_us_per_op": round(1e6 * statistics.median(dispatches) / n, 2),
        }
        print(
            f"{name:44s} call {rows[name]['call_us_per_op']:6.1f} us/op   dispatch {rows[name]['dispatch_us_per_op']:6.1f} us/op",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(
                {"ops": n, "device": str(mx.default_device()), "mlx": mx.__version__, "rows": rows}, handle, indent=1
            )


def graph(args):
    model, info = build(args)
    step, state = fresh_step(model)
    counts = graph_primitives(step, random_batch(info, args.batch, args.length, 1), state)
    kernels = sum(n for name, n in counts.items() if name not in VIEW_PRIMITIVES)
    print(f"{sum(counts.values())} nodes, {kernels} of them not views (about the kernels launched)")
    for name, n in counts.most_common():
        print(f"{n:6d} {name}{'  (view)' if name in VIEW_PRIMITIVES else ''}")


def steady_loop(step, batch, state, steps):
    """ms per pipelined step (after 10 warm-up steps), as the trainer runs them on GPUs; its
    name is the frame a profile is cut to."""
    return pipelined_ms(lambda: step(*batch), state, 10, steps)


def steady(args):
    model, info = build(args)
    step, state = fresh_step(model)
    ms = steady_loop(step, random_batch(info, args.batch, args.length, 1), state, args.steps)
    print(f"{ms:.1f} ms per pipelined step")


def summarize(path, top=40):
    """Shares of py-spy raw samples (``stack count`` lines) inside steady_loop."""
    inclusive, primitives, total = collections.Counter(), collections.Counter(), 0
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if "steady_loop" not in stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame[:110]] += n
        if "mlx::core::gpu::eval" in frames:
            below = frames[frames.index("mlx::core::gpu::eval") + 1 :]
            primitives[below[0][:90] if below else "(gpu::eval itself)"] += n
    if not total:
        raise SystemExit(f"{path}: no samples inside steady_loop (is it py-spy's raw format?)")
    lines = [f"{total} samples inside steady_loop", "inclusive share per frame:"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["share per primitive under gpu::eval:"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in primitives.most_common(20)]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["first-step", "op-costs", "graph", "steady", "summarize"])
    parser.add_argument("path", nargs="?", help="summarize: py-spy raw output")
    parser.add_argument("--model", default="TinyLlama-1.1B")
    parser.add_argument("--tokenizer")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.mode == "summarize":
        if not args.path:
            parser.error("summarize needs the py-spy raw file")
        print(summarize(args.path))
    else:
        {"first-step": first_step, "op-costs": op_costs, "graph": graph, "steady": steady}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
