"""Peak memory of one training step against sequence length, one piece removed at a time.

Each measurement is a fresh process that builds the trainer's step as `flashtune train` does
(LoRA rank 8 on every block, fused projections, the attention swapped in, AdamW, mx.compile),
runs it on one random sequence of L tokens and prints MLX's peak memory. The variants:

- ``best``: practical attention, grad checkpointing, chunked loss (the bench's flashtune settings);
- ``plain-loss``: the same with every token's logits at once (``--no-chunked-loss``);
- ``no-checkpoint``: the same without grad checkpointing;
- ``baseline-attn``: ``best`` with the materialized-scores attention;
- ``blocks-only``: ``best`` with the head and loss replaced by a random projection of the hidden
  states (what the blocks alone hold);
- ``no-run-ahead``: ``best`` with MLX's memory limit at 1 MB, so its evaluation waits for queued
  work before allocating more: the step's working set without the operations MLX runs ahead.

    python scripts/long_context_memory.py --lengths 1024,2048 [--variants best,plain-loss] [--model SmolLM2-135M]

``--loss-only --chunks 1280,512,256,128``: the loss alone (the model's head shape, random
weights, forward and backward compiled) at each length, plain and chunked at each chunk length,
with and without MLX's run-ahead.
"""

import argparse
import json
import subprocess
import sys
import time

VARIANTS = ("best", "plain-loss", "no-checkpoint", "baseline-attn", "blocks-only", "no-run-ahead")


def measure(model_name: str, length: int, variant: str, steps: int, layers: int = 0) -> dict:
    """Builds the step for ``variant`` and runs it ``steps`` times; returns the peak memory.

    ``layers``: keep only the first blocks (0: all); random weights stay lazy, so the others cost nothing.
    """
    import mlx.core as mx
    import mlx.optimizers as optim

    import flashtune  # noqa: F401  (BLAS before mlx)
    from flashtune import models
    from flashtune.patch import patch
    from flashtune.train.chunked_loss import chunk_tokens_for
    from flashtune.train.fused_projections import fuse_projections
    from flashtune.train.lora import adapter_config, apply_lora, enable_grad_checkpoint
    from flashtune.train.step import make_steps

    model, _, info = models.load_model(model_name, init="pretrained" if model_name == "SmolLM2-135M" else "random")
    if layers:
        model.model.layers = model.model.layers[:layers]
    apply_lora(model, adapter_config(len(model.layers), 8, 20.0, 0.0))
    patch(model, "baseline" if variant == "baseline-attn" else "practical")
    fuse_projections(model)
    if variant != "no-checkpoint":
        enable_grad_checkpoint(model)
    if variant == "blocks-only":  # the loss reads the hidden states through a fixed random projection
        projection = mx.random.normal((model.args.hidden_size, 2))
        model.__class__ = type("BlocksOnly", (type(model),), {"__call__": lambda self, x: self.model(x) @ projection})
    optimizer = optim.AdamW(learning_rate=1e-5)
    optimizer.init(model.trainable_parameters())
    mx.eval(model.parameters())
    model.train()
    chunk = chunk_tokens_for(model, variant not in ("plain-loss", "blocks-only"))
    step = make_steps(model, optimizer, None, 1, True, chunk)
    vocab = info.config["vocab_size"] if variant != "blocks-only" else 2
    mx.random.seed(0)
    inputs, targets = (
        mx.random.randint(0, info.config["vocab_size"], (1, length)),
        mx.random.randint(0, vocab, (1, length)),
    )
    mask = mx.ones((1, length))
    mx.eval(inputs, targets, mask)
    before = mx.get_active_memory()
    if variant == "no-run-ahead":
        mx.set_memory_limit(1 << 20)
    mx.reset_peak_memory()
    tic = time.perf_counter()
    for _ in range(steps):
        loss, _ = step.full(inputs, targets, mask)
        mx.eval(loss, step.state)
    return {"length": length, "variant": variant, "before_gb": before / 1e9, "peak_gb": mx.get_peak_memory() / 1e9,
            "loss": loss.item(), "seconds": time.perf_counter() - tic, "chunk_tokens": chunk, "blocks": len(model.layers)}  # fmt: skip


def measure_loss(model_name: str, length: int, chunks: list, default_limit: int) -> list:
    """Extra peak of the loss's forward and backward: plain, then chunked at each chunk length.

    ``default_limit``: MLX's memory limit as the process started (restored for the runs with run-ahead).
    """
    import mlx.core as mx
    import mlx.nn as nn

    import flashtune  # noqa: F401  (BLAS before mlx)
    from flashtune.bench.context import model_facts
    from flashtune.models import resolve
    from flashtune.models.random_init import shipped_config
    from flashtune.train.chunked_loss import Head, cross_entropy_sum

    vocab, hidden_size = (
        model_facts(model_name).vocab_size,
        shipped_config(resolve(model_name).config_name)["hidden_size"],
    )
    mx.random.seed(0)
    linear = nn.Linear(hidden_size, vocab, bias=False)
    linear.freeze()
    head = Head(linear, linear, vocab)
    hidden = 0.1 * mx.random.normal((1, length, hidden_size))
    targets, mask = mx.random.randint(0, vocab, (1, length)), mx.ones((1, length))
    mx.eval(linear.parameters(), hidden, targets, mask)

    def plain(h):
        return (mx.fast.cross_entropy(linear(h), targets) * mask).astype(mx.float32).sum()

    rows = []
    for run_ahead in (True, False):
        mx.set_memory_limit(default_limit if run_ahead else 1 << 20)
        for chunk in [None, *chunks]:
            loss = plain if chunk is None else (lambda h, c=chunk: cross_entropy_sum(h, targets, mask, head, c))
            step = mx.compile(mx.value_and_grad(loss))
            base = mx.get_active_memory()
            mx.reset_peak_memory()
            mx.eval(step(hidden))
            rows.append(
                {
                    "length": length,
                    "chunk": chunk,
                    "run_ahead": run_ahead,
                    "extra_mib": (mx.get_peak_memory() - base) / 2**20,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M")
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--layers", type=int, default=0, help="keep only the first N blocks (0: all)")
    parser.add_argument("--loss-only", action="store_true", help="measure the loss alone (see the module docstring)")
    parser.add_argument("--chunks", default="1280,512,256,128", help="with --loss-only: chunk lengths")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single measurement, in this process
    args = parser.parse_args()
    if args.loss_only:
        import mlx.core as mx

        import flashtune  # noqa: F401  (BLAS before mlx)

        default_limit = mx.get_memory_limit()
        print("| L | loss | MLX run-ahead | extra peak MiB |\n|---|---|---|---|", flush=True)
        for length in [int(x) for x in args.lengths.split(",")]:
            for r in measure_loss(args.model, length, [int(c) for c in args.chunks.split(",")], default_limit):
                name = "plain" if r["chunk"] is None else f"chunks of {r['chunk']}"
                print(f"| {length} | {name} | {'on' if r['run_ahead'] else 'off'} | {r['extra_mib']:.0f} |", flush=True)
        return
    if args.one:
        print(json.dumps(measure(args.model, int(args.lengths), args.variants, args.steps, args.layers)), flush=True)
        return
    print("| L | variant | peak GB | of which before the step | seconds |\n|---|---|---|---|---|", flush=True)
    for length in [int(x) for x in args.lengths.split(",")]:
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
            command = [sys.executable, "-m", "flashtune.bench.long_context_memory", "--one", "--model", args.model, "--lengths", str(length), "--variants", variant,
                       "--steps", str(args.steps), "--layers", str(args.layers)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"| {length} | {variant} | failed: {done.stderr.strip().splitlines()[-1:]} | | |", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| {length} | {variant} | {r['peak_gb']:.2f} | {r['before_gb']:.2f} | {r['seconds']:.0f} |", flush=True
            )


if __name__ == "__main__":
    main()
