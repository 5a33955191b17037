"""Everything a training run needs before its first step, checked cheapest first.

``prepare(config)`` validates the attention name, the model name, the data files and the run
folder before loading anything heavy; then it loads the model and data, plans the padded batch
lengths, adds LoRA or DoRA (or unfreezes the last blocks: full fine-tuning), swaps attention,
creates the optimizer, restores a checkpoint when resuming, and writes the records' ``run_info``
header. The result is a `Run`: what the loop works on.
"""

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from flashtune import attention, data, env, models
from flashtune.config import TrainConfig
from flashtune.data import shapes
from flashtune.errors import TrainingError
from flashtune.log import logger, say_once
from flashtune.patch import patch
from flashtune.train import checkpoint, records
from flashtune.train.fused_projections import fuse_projections
from flashtune.train.lora import adapter_config, apply_lora, enable_grad_checkpoint, train_last_blocks


@dataclass
class Run:
    """A prepared run: model, data, optimizer and where its outputs go."""

    config: TrainConfig
    model: nn.Module
    tokenizer: Any
    info: models.ModelInfo
    splits: data.DatasetSplits
    optimizer: optim.Optimizer
    adapter_config: dict[str, Any]
    run_dir: Path
    writer: records.RecordWriter
    pad_lengths: list[int] | None
    pad_to: int
    trainable_params: int
    start: int  # iterations already done (resume)
    world: Any = None  # the mx.distributed group, or None
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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


def check_data_files(path: str | None) -> str:
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


def plan_pad_lengths(config: TrainConfig, dataset, backend: str, world_size: int = 1) -> tuple[list[int] | None, int]:
    """How the run pads its batches: (planned lengths or None, length multiple).

    ``--fixed-length`` gives one length; ``--pad-to-multiple`` a plain multiple (no plan);
    otherwise `shapes.plan_lengths` over every batch of the whole run, from iteration 1 even
    when resuming, so a resumed run pads (and compiles) exactly as the uninterrupted one.
    """
    costs = shapes.COSTS.get(backend, shapes.COSTS["cpu"])
    if config.pack:
        return [pack_length(config, dataset, costs.granularity)], costs.granularity
    if config.fixed_length:
        return [config.fixed_length], costs.granularity
    if config.pad_to_multiple:
        return None, config.pad_to_multiple
    n = config.iters * config.grad_accumulation
    lengths = [
        data.longest_input(b) for b in data.batch_examples(dataset, config.batch_size, seed=config.seed, num_steps=n)
    ]
    return shapes.plan_lengths(lengths, costs, rows=config.batch_size // world_size), costs.granularity


def pack_length(config: TrainConfig, dataset, granularity: int) -> int:
    """Slots per packed row: --pack-length, else the longest example rounded up to ``granularity``."""
    if config.pack_length:
        return config.pack_length
    return shapes.round_up(int(max(dataset.lengths)) - 1, granularity)


def make_schedule(config: TrainConfig):
    """Linear warm-up to the peak learning rate, then cosine decay to min_lr_ratio of it."""
    peak = config.learning_rate
    decay_steps = max(config.iters - config.warmup, 1)
    cosine = optim.cosine_decay(peak, decay_steps, end=peak * config.min_lr_ratio)
    if config.warmup <= 0:
        return cosine
    return optim.join_schedules([optim.linear_schedule(0.0, peak, config.warmup), cosine], [config.warmup])


def _join_world(config: TrainConfig):
    """(group or None, rank, size); the global batch must split evenly over the ranks."""
    world = mx.distributed.init() if config.distributed or launched_distributed() else None
    rank, world_size = (world.rank(), world.size()) if world else (0, 1)
    if config.batch_size % world_size:
        raise ValueError(
            f"batch_size={config.batch_size} (the global batch) must be a multiple of the {world_size} ranks"
        )
    return world, rank, world_size


def load_splits(config: TrainConfig, tokenizer, data_format: str, model_context: int | None) -> data.DatasetSplits:
    """The tokenized splits of ``config.data`` as training sees them (prompt masking, length limits).

    Args:
        data_format: what `check_data_files` returned ("text" data has no prompt to mask).
        model_context: the model's max_position_embeddings.
    """
    mask_prompt = config.mask_prompt and data_format != "text"
    splits = data.load_dataset(
        config.data,
        tokenizer,
        mask_prompt=mask_prompt,
        max_seq_length=config.max_seq_length,
        truncate=config.truncate,
        model_context=model_context,
    )
    if config.pack and config.pack_length and config.truncate:
        splits.train = data.check_lengths(splits.train, config.pack_length + 1, truncate=True)
    return splits


def _load(config: TrainConfig, spec, data_format: str):
    """Model, tokenizer, info and tokenized splits, checked against --fixed-length."""
    mx.random.seed(config.seed)
    model, tokenizer, info = models.load_model(
        spec,
        init=config.init,
        dtype=config.dtype,
        quantized=config.qlora or None,
        seed=config.seed,
        tokenizer=config.tokenizer,
    )
    splits = load_splits(config, tokenizer, data_format, info.max_position_embeddings)
    longest = max(splits.train.lengths) - 1
    if config.fixed_length and longest > config.fixed_length:
        raise ValueError(f"fixed_length={config.fixed_length} is shorter than the longest example ({longest} inputs)")
    return model, tokenizer, info, splits


def _make_trainable(model: nn.Module, config: TrainConfig) -> tuple[dict[str, Any], int]:
    """LoRA, DoRA or the last blocks' weights, as --fine-tune-type says: (adapter config, trainable)."""
    adapters = adapter_config(
        config.lora_layers, config.lora_rank, config.lora_scale, config.lora_dropout, config.fine_tune_type
    )
    if config.fine_tune_type != "full":
        return adapters, apply_lora(model, adapters, config.lora_precision)
    say_once(
        "full-fine-tune",
        f"full fine-tuning: every weight of the last {config.lora_layers} blocks trains; --lora-precision, "
        "--fuse-projections and the LoRA rank, scale and dropout apply to LoRA/DoRA branches only and are not used",
        level=logging.INFO,
    )
    return adapters, train_last_blocks(model, config.lora_layers)


def _adapt(model: nn.Module, config: TrainConfig) -> tuple[dict[str, Any], int, int]:
    """What trains, the attention swap, fused projections and checkpointing: (adapter config, trainable, fused groups)."""
    adapters, n_trainable = _make_trainable(model, config)
    patch(model, config.attn)
    fused_groups = fuse_projections(model) if config.fuse_projections and config.fine_tune_type != "full" else 0
    if config.grad_checkpoint:
        enable_grad_checkpoint(model)
    # Random-init weights are lazy: materialize them now, as loading, not inside step 1's timing.
    mx.eval(model.parameters())
    return adapters, n_trainable, fused_groups


def _make_optimizer(model: nn.Module, config: TrainConfig) -> optim.Optimizer:
    optimizer = optim.AdamW(learning_rate=make_schedule(config), weight_decay=config.weight_decay)
    # Its state (moments per parameter) exists before the step is compiled: created inside the
    # first step instead, it changes the compiled function's inputs, so step 2 traces and
    # compiles again (H100, TinyLlama 4x1024: calling step 2 took 91 ms instead of 7).
    optimizer.init(model.trainable_parameters())
    return optimizer


def _restore_or_clear(config: TrainConfig, run_dir: Path, model, optimizer, is_main: bool) -> int:
    """Loads the last checkpoint with --resume (returns its iteration), or clears --overwrite's folder."""
    if config.resume:
        _, folder = checkpoint.latest(run_dir)
        start = checkpoint.load(folder, model, optimizer)["step"]
        logger.info(f"resuming from {folder} (iteration {start})")
        return start
    if config.overwrite and is_main and run_dir.exists():
        for stale in ("records.jsonl", "checkpoints"):
            target = run_dir / stale
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    return 0


def _log_plan(pad_lengths: list[int] | None) -> None:
    if pad_lengths:
        word = "shape" if len(pad_lengths) == 1 else "shapes"
        logger.info(
            f"batches padded to lengths {pad_lengths}: {len(pad_lengths)} compiled {word} (flashtune.data.shapes)"
        )


def prepare(config: TrainConfig) -> Run:
    """Checks, loads and sets up everything for ``config`` (module docstring); returns the `Run`.

    Raises:
        KeyError: unknown attention name. ValueError/FileNotFoundError: unknown model, bad data.
        TrainingError: the run folder holds a run and neither --resume nor --overwrite was given.
    """
    attention.check_name(config.attn)
    spec = models.resolve(config.model)
    data_format = check_data_files(config.data)
    if config.pack and config.fixed_length:
        raise ValueError("--pack with --fixed-length: both set the row length; give --pack-length instead")
    world, rank, world_size = _join_world(config)
    run_dir = run_dir_for(config, check=rank == 0)

    model, tokenizer, info, splits = _load(config, spec, data_format)
    pad_lengths, pad_to = plan_pad_lengths(config, splits.train, env.backend(), world_size)
    if rank == 0:
        _log_plan(pad_lengths)
    lora, n_trainable, fused_groups = _adapt(model, config)
    optimizer = _make_optimizer(model, config)
    start = _restore_or_clear(config, run_dir, model, optimizer, rank == 0)
    run_dir.mkdir(parents=True, exist_ok=True)

    writer = records.RecordWriter(
        Path(config.records) if config.records else run_dir / "records.jsonl", enabled=rank == 0
    )
    writer.write(
        env.run_info(
            config.to_dict(),
            model=info.to_dict(),
            dtype=info.dtype,
            seed=config.seed,
            world_size=world_size,
            trainable_params=n_trainable,
            fused_projection_groups=fused_groups,
            resumed_from=start or None,
            pad_lengths=pad_lengths,
            pad_to_multiple=None if pad_lengths else pad_to,
        )
    )
    return Run(
        config,
        model,
        tokenizer,
        info,
        splits,
        optimizer,
        lora,
        run_dir,
        writer,
        pad_lengths,
        pad_to,
        n_trainable,
        start,
        world,
        rank,
        world_size,
    )
