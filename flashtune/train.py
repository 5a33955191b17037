"""The LoRA training loop: a function, not a framework.

``train(config)`` validates everything cheap first (attention name, model name, data files, run
folder), then loads the model, adds LoRA, swaps attention through the patcher and runs a
compiled step per batch (one compile per distinct batch shape, as mlx-lm does; the padded lengths
are planned per run to keep shapes few, see flashtune.shapes). Each iteration's wall time is
recorded (see ``flashtune.records``); evaluation and checkpoint time stay out of it.
"""

import os
import shutil
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map
from tqdm import tqdm

from flashtune import attention, checkpoint, data, env, iterations, models, records, shapes
from flashtune.config import TrainConfig
from flashtune.errors import TrainingError
from flashtune.fused_projections import fuse_projections
from flashtune.generate import answer, held_out_prompts
from flashtune.lora import adapter_config, apply_lora, enable_grad_checkpoint
from flashtune.log import logger
from flashtune.patch import patch

def run_dir_for(config: TrainConfig, check: bool = True) -> Path:
    """The run folder; refuses to reuse one that holds a run unless --resume or --overwrite.

    Only rank 0 checks (``check``): it alone writes there, and other ranks would race with it.
    """
    out = Path(config.out or f"runs/{Path(config.model).name}-{config.attn}").expanduser().resolve()
    if not check:
        return out
    has_run = (out / "checkpoints").exists() or (out / "records.jsonl").exists()
    if has_run and not (config.resume or config.overwrite):
        raise TrainingError(
            f"{out} already holds a run; pass --resume to continue it, --overwrite to replace "
            "it, or --out to choose another folder"
        )
    if config.resume and checkpoint.latest(out) is None:
        raise TrainingError(f"--resume: no checkpoint in {out}/checkpoints")
    return out


def launched_distributed() -> bool:
    """True under ``mlx.launch``, which sets MLX_RANK for each process it starts."""
    return "MLX_RANK" in os.environ


def check_data_files(path: Optional[str]) -> str:
    """Parses the data files (no tokenizer needed) so a malformed line fails before model load.

    Returns:
        The data format of the train split ("completions", "chat" or "text").
    """
    root = data.default_dataset_dir() if path is None else Path(path).expanduser()
    files = [root] if root.is_file() else [root / f"{s}.jsonl" for s in data.SPLITS]
    if not root.exists():
        raise FileNotFoundError(f"data path {root} does not exist; expected a folder with train.jsonl and valid.jsonl")
    formats = [data.read_jsonl(file)[0] for file in files if file.is_file()]
    if not formats:
        raise FileNotFoundError(f"data folder {root} has no train.jsonl")
    return formats[0]


def make_schedule(config: TrainConfig):
    """Linear warm-up to the peak learning rate, then cosine decay to min_lr_ratio of it."""
    peak = config.learning_rate
    decay_steps = max(config.iters - config.warmup, 1)
    cosine = optim.cosine_decay(peak, decay_steps, end=peak * config.min_lr_ratio)
    if config.warmup <= 0:
        return cosine
    return optim.join_schedules([optim.linear_schedule(0.0, peak, config.warmup), cosine], [config.warmup])


def plan_pad_lengths(config: TrainConfig, dataset, backend: str, world_size: int = 1) -> Tuple[Optional[List[int]], int]:
    """How the run pads its batches: (planned lengths or None, length multiple).

    ``--fixed-length`` gives one length; ``--pad-to-multiple`` a plain multiple (no plan);
    otherwise `shapes.plan_lengths` over every batch of the whole run, from iteration 1 even
    when resuming, so a resumed run pads (and compiles) exactly as the uninterrupted one.
    """
    costs = shapes.COSTS.get(backend, shapes.COSTS["cpu"])
    if config.fixed_length:
        return [config.fixed_length], costs.granularity
    if config.pad_to_multiple:
        return None, config.pad_to_multiple
    n = config.iters * config.grad_accumulation
    lengths = [data.longest_input(b) for b in data.batch_examples(dataset, config.batch_size, seed=config.seed, num_steps=n)]
    return shapes.plan_lengths(lengths, costs, rows=config.batch_size // world_size), costs.granularity


def pipelines(config: TrainConfig, backend: str) -> bool:
    """Whether step i+1 is dispatched before the host waits for step i: with --pipeline, on GPUs.

    On the CPU backend the training step ran inside ``mx.async_eval`` (measured: the call took
    the whole 2.2-2.5 s step of the default SmolLM2 run), so there is nothing to overlap, and
    waiting late would bill each step's time to the iteration before it.
    """
    return config.pipeline and backend != "cpu"


def loss_sum(model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array):
    """Summed token cross-entropy and token count; dividing by the global count after summing
    over micro-batches and ranks gives exactly the loss of the combined batch."""
    logits = model(inputs)
    # Fused on CUDA and Metal (one pass over the vocabulary, float32 accumulation).
    ce = mx.fast.cross_entropy(logits, targets) * mask
    return ce.astype(mx.float32).sum(), mask.sum()


def evaluate(model, dataset, config: TrainConfig, pad_to: int) -> float:
    total, count = mx.array(0.0), mx.array(0.0)
    n = data.num_batches(dataset, config.batch_size)
    n = n if config.val_batches < 0 else min(n, config.val_batches)
    for batch in data.iterate_batches(dataset, config.batch_size, seed=config.seed, num_steps=n, loop=False, pad_to_multiple=pad_to):
        s, c = loss_sum(model, *batch)
        total, count = total + s, count + c
        mx.eval(total, count)
    return (total / count).item()


class _StopRequest:
    """Turns Ctrl-C into a flag the loop checks after the current step, so a checkpoint is saved."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True
            logger.warning("interrupt: finishing this step, saving a checkpoint, then stopping")

        self._previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


def train(config: TrainConfig) -> Dict[str, Any]:
    """Fine-tunes with LoRA as ``config`` says; returns the run summary (see records.summarize).

    Raises:
        KeyError: unknown attention name. ValueError/FileNotFoundError: unknown model, bad data.
        TrainingError: run folder conflicts, NaN loss, out of memory.
    """
    # Cheap checks first: nothing heavy is loaded until all of these pass.
    attention.check_name(config.attn)
    spec = models.resolve(config.model)
    data_format = check_data_files(config.data)
    world = mx.distributed.init() if config.distributed or launched_distributed() else None
    rank, world_size = (world.rank(), world.size()) if world else (0, 1)
    if config.batch_size % world_size:
        raise ValueError(f"batch_size={config.batch_size} (the global batch) must be a multiple of the {world_size} ranks")
    is_main = rank == 0
    run_dir = run_dir_for(config, check=is_main)

    mx.random.seed(config.seed)
    model, tokenizer, info = models.load_model(spec, init=config.init, dtype=config.dtype, quantized=config.qlora or None, seed=config.seed, tokenizer=config.tokenizer)
    splits = data.load_dataset(config.data, tokenizer, mask_prompt=config.mask_prompt and data_format != "text", max_seq_length=config.max_seq_length, truncate=config.truncate, model_context=info.max_position_embeddings)
    if config.fixed_length:
        if max(splits.train.lengths) - 1 > config.fixed_length:
            raise ValueError(f"fixed_length={config.fixed_length} is shorter than the longest example ({max(splits.train.lengths) - 1} inputs)")

    pad_lengths, pad_to = plan_pad_lengths(config, splits.train, env.backend(), world_size)
    if is_main and pad_lengths:
        shapes_word = "shape" if len(pad_lengths) == 1 else "shapes"
        logger.info(f"batches padded to lengths {pad_lengths}: {len(pad_lengths)} compiled {shapes_word} (flashtune.shapes)")

    lora = adapter_config(config.lora_layers, config.lora_rank, config.lora_scale, config.lora_dropout)
    n_trainable = apply_lora(model, lora, config.lora_precision)
    patch(model, config.attn)
    fused_groups = fuse_projections(model) if config.fuse_projections else 0
    if config.grad_checkpoint:
        enable_grad_checkpoint(model)
    # Random-init weights are lazy: materialize them now, as loading, not inside step 1's timing.
    mx.eval(model.parameters())
    optimizer = optim.AdamW(learning_rate=make_schedule(config), weight_decay=config.weight_decay)
    # Its state (moments per parameter) exists before the step is compiled: created inside the
    # first step instead, it changes the compiled function's inputs, so step 2 traces and
    # compiles again (measured on the H100, TinyLlama 4x1024: calling step 2 took 91 ms, now 7).
    optimizer.init(model.trainable_parameters())

    start = 0
    if config.resume:
        step, folder = checkpoint.latest(run_dir)
        start = checkpoint.load(folder, model, optimizer)["step"]
        logger.info(f"resuming from {folder} (iteration {start})")
    elif config.overwrite and is_main and run_dir.exists():
        for stale in ("records.jsonl", "checkpoints"):
            target = run_dir / stale
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)

    writer = records.RecordWriter(Path(config.records) if config.records else run_dir / "records.jsonl", enabled=is_main)
    writer.write(env.run_info(config.to_dict(), model=info.to_dict(), dtype=info.dtype, seed=config.seed, world_size=world_size, trainable_params=n_trainable, fused_projection_groups=fused_groups, resumed_from=start or None, pad_lengths=pad_lengths, pad_to_multiple=None if pad_lengths else pad_to))
    model_label = info.label
    prompts = held_out_prompts(config.data) if config.sample and is_main else []
    before = [answer(model, tokenizer, p, config.sample_tokens) for p in prompts]

    value_and_grad = nn.value_and_grad(model, loss_sum)
    state = [model.state, optimizer.state, mx.random.state]

    def reduce_and_update(grads, total_loss, total_tokens):
        if world_size > 1:
            grads = tree_map(lambda g: mx.distributed.all_sum(g, group=world), grads)
            total_loss = mx.distributed.all_sum(total_loss, group=world)
            total_tokens = mx.distributed.all_sum(total_tokens, group=world)
        optimizer.update(model, tree_map(lambda g: g / total_tokens, grads))
        return total_loss / total_tokens, total_tokens

    def micro_step(inputs, targets, mask):
        (loss, tokens), grads = value_and_grad(model, inputs, targets, mask)
        return loss, tokens, grads

    def full_step(inputs, targets, mask):
        loss, tokens, grads = micro_step(inputs, targets, mask)
        return reduce_and_update(grads, loss, tokens)

    wrap = partial(mx.compile, inputs=state, outputs=state) if config.compile else (lambda f: f)
    full_step, micro_step, reduce_and_update = wrap(full_step), wrap(micro_step), wrap(reduce_and_update)

    micro = config.grad_accumulation
    batches = data.iterate_batches(splits.train, config.batch_size, seed=config.seed, start_step=start * micro, pad_to_multiple=pad_to, pad_lengths=pad_lengths)
    last_saved = start
    model.train()
    mx.reset_peak_memory()
    quiet = not is_main or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    bar = tqdm(total=config.iters, initial=start, disable=quiet, unit="it", dynamic_ncols=True)

    def save(step: int) -> None:
        nonlocal last_saved
        if is_main:
            checkpoint.save(run_dir, step, model, optimizer, lora, {"config": config.to_dict(), "model": info.to_dict()})
        last_saved = step

    def stop_on_nan(it: int, loss: float) -> None:
        raise TrainingError(
            f"loss became {loss} at iteration {it}; stopped. The last good checkpoint is "
            f"iteration {last_saved} in {run_dir}. Lower --learning-rate or check the data."
        )

    log = iterations.IterationLog(
        write=writer.write,
        show=lambda loss, tok_s, peak: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", peak_gb=f"{peak:.2f}")),
        nan_stop=stop_on_nan,
        fields={"attn": config.attn, "model": model_label, "world_size": world_size},
        compiled=config.compile,
        completed=start,
    )
    pending: Optional[iterations.Iteration] = None
    pipelined = pipelines(config, env.backend())

    def evaluates_at(it: int) -> bool:
        return splits.valid is not None and ((config.steps_per_eval and it % config.steps_per_eval == 0) or it == config.iters)

    def validate(it: int) -> None:
        eval_tic = time.perf_counter()
        model.eval()
        val = evaluate(model, splits.valid, config, pad_to)
        model.train()
        writer.write({"eval": True, "iter": it, "val_loss": val, "eval_s": time.perf_counter() - eval_tic})
        bar.write(f"iteration {it}: validation loss {val:.3f}")

    def saves_at(it: int) -> bool:
        return it == config.iters or bool(config.steps_per_save and it % config.steps_per_save == 0)

    # The starting validation loss comes before the first step, as in mlx-lm: evaluating between
    # steps 1 and 2 (uncompiled, other shapes) made step 2 cost ~0.3 s instead of ~45 ms (H100).
    if splits.valid is not None and start < config.iters:
        validate(start)
    try:
        with _StopRequest() as stop:
            for it in range(start + 1, config.iters + 1):
                tic = time.perf_counter()
                # Dropout noise is a function of (seed, iteration), so a resumed run repeats it.
                mx.random.seed(config.seed * 1_000_003 + it)
                batch_shapes, parts = [], []
                for _ in range(micro):
                    batch = next(batches)
                    if world_size > 1:
                        batch = data.Batch(*(x[rank::world_size] for x in batch))
                    batch_shapes.append(tuple(batch.inputs.shape))
                    parts.append(batch)
                current = iterations.Iteration(it, tic, batch_shapes)
                with iterations.out_of_memory_advice(current):
                    if micro == 1:
                        loss, tokens = full_step(*parts[0])
                    else:
                        grads, total, count = None, mx.array(0.0), mx.array(0.0)
                        for part in parts:
                            l, c, g = micro_step(*part)
                            grads = g if grads is None else tree_map(mx.add, grads, g)
                            total, count = total + l, count + c
                        loss, tokens = reduce_and_update(grads, total, count)
                    current.loss, current.tokens, current.lr = loss, tokens, optimizer.learning_rate
                    # Queued behind the previous step; the host goes on to record that one while
                    # the device runs this one (or waits right away without --pipeline).
                    mx.async_eval(state, loss, tokens)
                if pending is not None:
                    log.complete(pending)
                pending = current
                if not pipelined or evaluates_at(it) or saves_at(it) or stop.requested:
                    pending = None
                    log.complete(current)
                    if evaluates_at(it):
                        validate(it)
                    if saves_at(it) or stop.requested:
                        save(it)
                    if stop.requested:
                        raise KeyboardInterrupt
                    log.pause()
    except KeyboardInterrupt:
        if pending is not None:  # the model already holds its update: finish and keep it
            log.complete(pending)
        if last_saved < log.completed:
            save(log.completed)
        bar.close()
        writer.close()
        logger.warning(f"stopped; checkpoint at iteration {last_saved} in {run_dir}; continue with --resume --out {run_dir}")
        raise
    bar.close()
    writer.close()
    summary = records.summarize(records.read(writer.path)) if is_main and writer.path else {}
    summary.update(run_dir=str(run_dir), model=model_label, attn=config.attn, trainable_params=n_trainable)
    if prompts:
        summary["samples"] = [
            {"prompt": p[-1]["content"], "before": b, "after": answer(model, tokenizer, p, config.sample_tokens)}
            for p, b in zip(prompts, before)
        ]
    return summary
