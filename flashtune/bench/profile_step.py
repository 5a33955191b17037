"""Where a LoRA training step's time goes: full step, forward, backward, LM head + loss, attention,
optimizer, the LoRA or DoRA layers (the step with mlx-lm's float32 layers vs flashtune's mixed ones), the
host's share (time until mx.async_eval returns), what a new batch shape costs (trace + graph compile,
then the first run's extra: kernels, cuDNN/cuBLAS plans), and the step with q/k/v and gate/up fused
(flashtune.train.fused_projections, the trainer's default; "step" is with separate projections).

    python scripts/profile_step.py --model TinyLlama-1.1B --attn demo --batch 4 --length 1024 [--tokenizer DIR] [--fine-tune-type dora]

Each part is compiled and timed alone (median of --repeat after --warmup), on random tokens,
with the same model, LoRA setup and dtype as `flashtune train --init random`.
"""

import argparse
import collections
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

import flashtune  # noqa: F401
from flashtune import attention, env, models
from flashtune.patch import patch
from flashtune.train.dora import MixedPrecisionDoRALinear
from flashtune.train.fused_projections import fuse_projections
from flashtune.train.lora import adapter_config, apply_lora, set_lora_precision
from flashtune.train.step import loss_sum


def timed(fn, warmup, repeat, state=()):
    """Median ms of ``fn`` with its result and ``state`` evaluated (a compiled step's updated
    parameters and optimizer state are lazy outputs: left unevaluated, their work would be
    billed to the next call)."""
    for _ in range(warmup):
        mx.eval(fn(), state)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        mx.eval(fn(), state)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def compiled_step(model, value_and_grad, optimizer, state):
    """The training step, compiled with ``state`` as inputs and outputs. Each call traces anew,
    so it picks up the LoRA classes and parameters the model has at the time."""

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, targets, mask):
        (loss, count), grads = value_and_grad(model, inputs, targets, mask)
        optimizer.update(model, grads)
        return loss

    return step


def dora_norm_parts(model, warmup, repeat):
    """ms for the row norms of every DoRA layer, as mlx-lm takes them (the adapted weight formed)
    and as flashtune does (flashtune.train.dora: the expanded square norm), each compiled."""
    layers = [m for _, m in model.named_modules() if isinstance(m, MixedPrecisionDoRALinear)]

    def adapted_weight_norms():
        return [mx.linalg.norm(m.linear.weight + (m.scale * m.lora_b.T) @ m.lora_a.T, axis=1) for m in layers]

    def expanded_norms():
        return [m.magnitude() for m in layers]

    return {
        f"DoRA row norms of {len(layers)} layers, adapted weight formed (mlx-lm)": timed(
            mx.compile(adapted_weight_norms), warmup, repeat
        ),
        f"DoRA row norms of {len(layers)} layers, expanded (flashtune)": timed(
            mx.compile(expanded_norms), warmup, repeat
        ),
    }


def dispatch_ms(fn, state, repeat):
    """Median ms until mx.async_eval returns: the host's work to encode and launch one step."""
    times = []
    for _ in range(repeat):
        out = fn()
        start = time.perf_counter()
        mx.async_eval(out, state)
        times.append(time.perf_counter() - start)
        mx.synchronize()
    return 1e3 * statistics.median(times)


def pipelined_ms(fn, state, warmup, repeat):
    """Mean ms per step when step i+1 is dispatched (mx.async_eval) before waiting for step i,
    so the host's per-step work overlaps the GPU's."""
    for _ in range(warmup):
        mx.eval(fn(), state)
    start, previous = time.perf_counter(), None
    for _ in range(repeat):
        out = fn()
        mx.async_eval(out, state)
        if previous is not None:
            mx.eval(previous)
        previous = out
    mx.eval(previous, state)
    return 1e3 * (time.perf_counter() - start) / repeat


def new_shape_ms(step, batch, state, warmup, repeat):
    """(trace + graph compile, first run minus a steady run) for a batch shape not seen before."""
    start = time.perf_counter()
    out = step(*batch)
    traced = time.perf_counter()
    mx.eval(out, state)
    first = time.perf_counter() - traced
    return 1e3 * (traced - start), 1e3 * first - timed(lambda: step(*batch), warmup, repeat, state)


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="TinyLlama-1.1B")
    parser.add_argument("--attn", default="demo")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--tokenizer")
    parser.add_argument(
        "--fine-tune-type", choices=["lora", "dora"], default="lora", help="adapters on the last 16 blocks"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out")
    return parser.parse_args()


class Setup:
    """The profiled model with adapters on its last 16 blocks (as the recipes), a batch and its step."""

    def __init__(self, args):
        self.args = args
        self.model, _, self.info = models.load_model(args.model, init="random", tokenizer=args.tokenizer)
        self.n_lora = min(16, len(self.model.layers))
        apply_lora(self.model, adapter_config(self.n_lora, 8, 20.0, 0.0, args.fine_tune_type), "mixed")
        patch(self.model, args.attn)
        mx.eval(self.model.parameters())
        self.optimizer = initialized_optimizer(self.model)
        B, L = args.batch, args.length
        self.tokens = mx.random.randint(0, self.info.config["vocab_size"], (B, L + 1))
        self.batch = (self.tokens[:, :-1], self.tokens[:, 1:], mx.ones((B, L)))
        self.value_and_grad = nn.value_and_grad(self.model, loss_sum)
        self.state = [self.model.state, self.optimizer.state]

    def timed(self, fn, state=None) -> float:
        return timed(fn, self.args.warmup, self.args.repeat, state)

    def shorter(self, length: int) -> tuple:
        """A batch of the same rows cut to ``length`` tokens."""
        cut = self.tokens[:, : length + 1]
        return cut[:, :-1], cut[:, 1:], mx.ones((self.args.batch, length))


def step_parts(s: Setup) -> tuple[dict[str, float], Callable]:
    """The whole step: compiled, dispatched, pipelined, with mlx-lm's float32 adapters, per-step floor, new shape."""
    args, B, L = s.args, s.args.batch, s.args.length
    set_lora_precision(s.model, "float32")
    step_float32 = compiled_step(s.model, s.value_and_grad, s.optimizer, s.state)
    float32_ms = s.timed(lambda: step_float32(*s.batch), s.state)
    set_lora_precision(s.model, "mixed")
    step = compiled_step(s.model, s.value_and_grad, s.optimizer, s.state)
    L_new = L - L // 8  # a shape the step has not been compiled for
    trace_ms, first_run_ms = new_shape_ms(step, s.shorter(L_new), s.state, args.warmup, args.repeat)
    parts = {
        "step": s.timed(lambda: step(*s.batch), s.state),
        "host time to dispatch the step (async_eval returns)": dispatch_ms(
            lambda: step(*s.batch), s.state, args.repeat
        ),
        "step, pipelined (step i+1 dispatched before step i is waited for)": pipelined_ms(
            lambda: step(*s.batch), s.state, args.warmup, args.repeat
        ),
        f"step with mlx-lm's float32 {args.fine_tune_type} layers": float32_ms,
        # 8x fewer tokens: what stays is the per-step floor (kernel dispatch, launches).
        f"step at B{B}x{L // 8} (1/8 of the tokens: per-step floor)": s.timed(
            lambda: step(*s.shorter(L // 8)), s.state
        ),
        f"new shape (B{B}x{L_new}): trace + graph compile": trace_ms,
        f"new shape (B{B}x{L_new}): first run minus a steady one": first_run_ms,
    }
    return parts, step


def component_parts(s: Setup) -> dict[str, float]:
    """Forward, gradients, optimizer, the head's loss and attention alone, each compiled on its own."""
    model, (inputs, targets, mask) = s.model, s.batch

    @partial(mx.compile, inputs=s.state)
    def forward_loss():
        return loss_sum(model, inputs, targets, mask)[0]

    # outputs=state too: nn.value_and_grad leaves its traced parameters in the model.
    @partial(mx.compile, inputs=s.state, outputs=s.state)
    def gradients():
        return s.value_and_grad(model, inputs, targets, mask)[1]

    grads = gradients()
    mx.eval(grads)

    @partial(mx.compile, inputs=s.state, outputs=s.state)
    def update():
        s.optimizer.update(model, grads)
        return mx.array(0)

    parts = {
        "forward+loss": s.timed(forward_loss),
        "value_and_grad": s.timed(gradients),
        "optimizer update": s.timed(update, s.state),
        "lm head + loss (fwd+bwd)": s.timed(head_loss_fn(s)),
    }
    n_layers = len(model.layers)
    fwd_bwd, fwd = (s.timed(fn) for fn in attention_fns(s))
    name = f"attention ({s.n_lora} fwd+bwd, {n_layers - s.n_lora} fwd)"
    parts[name] = s.n_lora * fwd_bwd + (n_layers - s.n_lora) * fwd
    parts["rest of value_and_grad (linears, LoRA, norms, RoPE)"] = (
        parts["value_and_grad"] - parts["lm head + loss (fwd+bwd)"] - parts[name]
    )
    if s.args.fine_tune_type == "dora":
        parts.update(dora_norm_parts(model, s.args.warmup, s.args.repeat))
    return parts


def head_loss_fn(s: Setup) -> Callable:
    """The LM head's matmul and cross-entropy, forward and backward, on random hidden states."""
    B, L = s.args.batch, s.args.length
    hidden = mx.random.normal((B, L, s.model.args.hidden_size)).astype(s.info.dtype and getattr(mx, s.info.dtype))
    head = s.model.lm_head if hasattr(s.model, "lm_head") else s.model.model.embed_tokens.as_linear
    targets = s.batch[1]

    @mx.compile
    def head_loss():
        return mx.grad(lambda h: mx.fast.cross_entropy(head(h), targets).sum())(hidden)

    return head_loss


def attention_fns(s: Setup) -> tuple[Callable, Callable]:
    """One block's attention at the profiled shape: (forward+backward, forward), compiled."""
    B, L = s.args.batch, s.args.length
    a = s.model.layers[-1].self_attn
    D = s.model.args.hidden_size // a.n_heads
    dtype = s.info.dtype and getattr(mx, s.info.dtype)
    q = mx.random.normal((B, a.n_heads, L, D)).astype(dtype)
    kv = mx.random.normal((B, a.n_kv_heads, L, D)).astype(dtype)
    fn = attention.get(s.args.attn)

    @mx.compile
    def fwd_bwd():
        return mx.grad(
            lambda q, k, v: fn(q, k, v, scale=D**-0.5, mask="causal").astype(mx.float32).sum(), argnums=(0, 1, 2)
        )(q, kv, kv)

    @mx.compile
    def fwd():
        return fn(q, kv, kv, scale=D**-0.5, mask="causal")

    return fwd_bwd, fwd


def fused_parts(s: Setup, step) -> tuple[dict[str, float], dict[str, tuple]]:
    """The step with q/k/v and gate/up fused, and the graph sizes of both steps."""
    B, L = s.args.batch, s.args.length
    graph = {"step": graph_size(step, s.batch, s.state)}
    fuse_projections(s.model)
    fused_step, fused_state = fresh_step(s.model)
    graph["step with q/k/v and gate/up fused"] = graph_size(fused_step, s.batch, fused_state)
    parts = {
        "step with q/k/v and gate/up fused (flashtune.train.fused_projections)": s.timed(
            lambda: fused_step(*s.batch), fused_state
        ),
        "  fused: host time to dispatch the step": dispatch_ms(
            lambda: fused_step(*s.batch), fused_state, s.args.repeat
        ),
        f"  fused: step at B{B}x{L // 8} (per-step floor)": s.timed(
            lambda: fused_step(*s.shorter(L // 8)), fused_state
        ),
    }
    return parts, graph


def main():
    args = _arguments()
    s = Setup(args)
    parts, step = step_parts(s)
    parts.update(component_parts(s))
    fused, graph = fused_parts(s, step)
    parts.update(fused)
    step_ms, B, L = parts["step"], args.batch, args.length
    print(
        f"{args.model} ({s.info.label}), {args.fine_tune_type}, attn {args.attn}, B{B}×L{L}, {s.info.dtype}, {env.device_name()}"
    )
    print(f"step {step_ms:.1f} ms = {B * L / step_ms * 1e3:,.0f} tokens/s")
    for name, ms in parts.items():
        print(f"  {name:68s} {ms:8.1f} ms  {100 * ms / step_ms:5.1f}% of the step")
    for name, (nodes, kernels) in graph.items():
        print(f"graph of the {name}: {nodes} nodes, {kernels} of them not views (about the kernels launched)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({**env.run_info(vars(args)), "parts_ms": parts, "graph_nodes": graph}, handle, indent=1)


# Primitives that are (usually) views or metadata: they launch no kernel.
VIEW_PRIMITIVES = {
    "Transpose",
    "Broadcast",
    "ExpandDims",
    "Squeeze",
    "Flatten",
    "Unflatten",
    "Reshape",
    "Slice",
    "AsStrided",
}


def graph_primitives(step, batch, state):
    """How many nodes of each primitive one compiled step's graph has, after MLX's compile
    fusion (fused elementwise kernels show as Compiled... nodes). The step runs once."""
    outputs = [step(*batch)] + [v for _, v in tree_flatten(state) if isinstance(v, mx.array)]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "step.dot")
        mx.export_to_dot(path, *outputs)
        labels = re.findall(r'label ="([^"]+)"', open(path).read())
    mx.eval(outputs)
    return collections.Counter(label.split(" ")[0] for label in labels)


def graph_size(step, batch, state):
    """(nodes, nodes that are not views) of one compiled step's graph: the host dispatches
    about one kernel per non-view node."""
    counts = graph_primitives(step, batch, state)
    return sum(counts.values()), sum(n for name, n in counts.items() if name not in VIEW_PRIMITIVES)


def initialized_optimizer(model):
    """AdamW with its state already made, as the trainer does (so a step traces once per shape)
    and evaluated (its zeros are inputs, not part of the step's graph)."""
    optimizer = optim.AdamW(learning_rate=1e-4, weight_decay=0.01)
    optimizer.init(model.trainable_parameters())
    mx.eval(optimizer.state)
    return optimizer


def fresh_step(model):
    """(compiled step, its state) of ``model`` as it is now, with a fresh optimizer (its state
    follows the parameters' dtype) and a fresh trace."""
    optimizer = initialized_optimizer(model)
    state = [model.state, optimizer.state]
    return compiled_step(model, nn.value_and_grad(model, loss_sum), optimizer, state), state


if __name__ == "__main__":
    main()
