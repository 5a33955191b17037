"""The LoRA training loop: a function, not a framework.

``train(config)`` prepares the run (`flashtune.train.prepare`: every cheap check first), then
runs one compiled step per iteration (one compile per distinct batch shape, as mlx-lm does; the
padded lengths are planned per run to keep shapes few, see flashtune.data.shapes). Each
iteration's wall time is recorded (`flashtune.train.records`); evaluation and checkpoint time
stay out of it. On GPUs iteration i+1 is dispatched before the host waits for iteration i.
"""

import os
import time
from typing import Any

import mlx.core as mx
from tqdm import tqdm

from flashtune import data, env
from flashtune.config import TrainConfig
from flashtune.errors import TrainingError
from flashtune.generate import answer, held_out_prompts
from flashtune.log import logger
from flashtune.train import checkpoint, iterations, records
from flashtune.train.chunked_loss import chunk_tokens_for
from flashtune.train.evaluate import evaluate
from flashtune.train.interrupt import StopRequest
from flashtune.train.prepare import Run, prepare
from flashtune.train.step import StepFunctions, make_steps


def pipelines(config: TrainConfig, backend: str) -> bool:
    """Whether step i+1 is dispatched before the host waits for step i: with --pipeline, on GPUs.

    On the CPU backend the training step ran inside ``mx.async_eval`` (measured: the call took
    the whole 2.2-2.5 s step of the default SmolLM2 run), so there is nothing to overlap, and
    waiting late would bill each step's time to the iteration before it.
    """
    return config.pipeline and backend != "cpu"


def _progress_bar(run: Run) -> tqdm:
    quiet = not run.is_main or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    return tqdm(total=run.config.iters, initial=run.start, disable=quiet, unit="it", dynamic_ncols=True)


def _show(bar: tqdm, record: dict[str, Any]) -> None:
    """Loss, tokens/s the step processed (padding included) and trained (loss tokens), peak memory."""
    wall = record["wall_s"]
    bar.update(1)
    bar.set_postfix(
        loss=f"{record['loss']:.3f}",
        tok_s=f"{record['padded_tokens'] / wall:,.0f}",
        trained_tok_s=f"{record['tokens_per_s']:,.0f}",
        peak_gb=f"{record['peak_mem_gb']:.2f}",
    )


def _train_batches(run: Run):
    """The run's batches from its first unfinished step: packed rows with --pack, else padded."""
    config = run.config
    start = run.start * config.grad_accumulation
    if config.pack:
        return data.iterate_packed_batches(
            run.splits.train, config.batch_size, run.pad_lengths[0], seed=config.seed, start_step=start
        )
    return data.iterate_batches(
        run.splits.train,
        config.batch_size,
        seed=config.seed,
        start_step=start,
        pad_to_multiple=run.pad_to,
        pad_lengths=run.pad_lengths,
    )


class Trainer:
    """One run's loop state: its step functions, records, progress bar and last checkpoint."""

    def __init__(self, run: Run):
        self.run, config = run, run.config
        chunk_tokens = chunk_tokens_for(run.model, config.chunked_loss, config.loss_chunk_tokens)
        self.steps: StepFunctions = make_steps(
            run.model, run.optimizer, run.world, run.world_size, config.compile, chunk_tokens
        )
        self.bar = _progress_bar(run)
        self.last_saved = run.start
        self.log = iterations.IterationLog(
            write=run.writer.write,
            show=lambda record: _show(self.bar, record),
            nan_stop=self._stop_on_nan,
            fields={"attn": config.attn, "model": run.info.label, "world_size": run.world_size},
            compiled=config.compile,
            completed=run.start,
        )
        self.pipelined = pipelines(config, env.backend())
        self.batches = _train_batches(run)

    def _stop_on_nan(self, it: int, loss: float) -> None:
        raise TrainingError(
            f"loss became {loss} at iteration {it}; stopped. The last good checkpoint is "
            f"iteration {self.last_saved} in {self.run.run_dir}. Lower --learning-rate or check the data."
        )

    def evaluates_at(self, it: int) -> bool:
        config = self.run.config
        return self.run.splits.valid is not None and (
            (config.steps_per_eval and it % config.steps_per_eval == 0) or it == config.iters
        )

    def saves_at(self, it: int) -> bool:
        config = self.run.config
        return it == config.iters or bool(config.steps_per_save and it % config.steps_per_save == 0)

    def validate(self, it: int) -> None:
        run, tic = self.run, time.perf_counter()
        run.model.eval()
        val = evaluate(run.model, run.splits.valid, run.config, run.pad_to)
        run.model.train()
        run.writer.write({"eval": True, "iter": it, "val_loss": val, "eval_s": time.perf_counter() - tic})
        self.bar.write(f"iteration {it}: validation loss {val:.3f}")

    def save(self, it: int) -> None:
        run = self.run
        if run.is_main:
            checkpoint.save(
                run.run_dir,
                it,
                run.model,
                run.optimizer,
                run.adapter_config,
                {"config": run.config.to_dict(), "model": run.info.to_dict()},
            )
        self.last_saved = it

    def _next_parts(self) -> list[data.Batch]:
        run, parts = self.run, []
        for _ in range(run.config.grad_accumulation):
            parts.append(next(self.batches))
        return parts

    def dispatch(self, it: int) -> iterations.Iteration:
        """Queues iteration ``it`` on the device and returns it, not waited for."""
        tic = time.perf_counter()
        # Dropout noise is a function of (seed, iteration), so a resumed run repeats it.
        mx.random.seed(self.run.config.seed * 1_000_003 + it)
        parts = self._next_parts()  # the global batch: every rank reads the same
        documents, input_tokens = sum(p.documents for p in parts), sum(p.input_tokens for p in parts)
        if self.run.world_size > 1:
            parts = [p.rows(slice(self.run.rank, None, self.run.world_size)) for p in parts]
        current = iterations.Iteration(
            it, tic, [tuple(p.inputs.shape) for p in parts], documents=documents, input_tokens=input_tokens
        )
        with iterations.out_of_memory_advice(current):
            current.loss, current.tokens = self.steps.run(parts)
            current.lr = self.run.optimizer.learning_rate
            # Queued behind the previous step: the host records that one while the device runs this.
            mx.async_eval(self.steps.state, current.loss, current.tokens)
        return current

    def settle(self, current: iterations.Iteration, stop: StopRequest) -> iterations.Iteration | None:
        """Waits for ``current`` unless it may stay in flight; evaluates and saves where due.

        Returns ``current`` when it stays in flight (pipelined), else None.
        """
        it = current.it
        if self.pipelined and not (self.evaluates_at(it) or self.saves_at(it) or stop.requested):
            return current
        self.log.complete(current)
        if self.evaluates_at(it):
            self.validate(it)
        if self.saves_at(it) or stop.requested:
            self.save(it)
        if stop.requested:
            raise KeyboardInterrupt
        self.log.pause()
        return None

    def interrupted(self, pending: iterations.Iteration | None) -> None:
        """After Ctrl-C: keeps the update already made and saves a checkpoint to resume from."""
        if pending is not None:
            self.log.complete(pending)
        if self.last_saved < self.log.completed:
            self.save(self.log.completed)
        self.close()
        run_dir = self.run.run_dir
        logger.warning(
            f"stopped; checkpoint at iteration {self.last_saved} in {run_dir}; continue with --resume --out {run_dir}"
        )

    def close(self) -> None:
        self.bar.close()
        self.run.writer.close()


def _run_iterations(trainer: Trainer) -> None:
    """The loop proper: dispatch iteration i, record iteration i-1 while the device runs i."""
    run = trainer.run
    pending = None
    try:
        with StopRequest() as stop:
            for it in range(run.start + 1, run.config.iters + 1):
                current = trainer.dispatch(it)
                if pending is not None:
                    trainer.log.complete(pending)
                pending = None
                pending = trainer.settle(current, stop)
    except KeyboardInterrupt:
        trainer.interrupted(pending)
        raise


def _samples(run: Run, prompts: list, before: list[str]) -> list[dict[str, str]]:
    return [
        {
            "prompt": p[-1]["content"],
            "before": b,
            "after": answer(run.model, run.tokenizer, p, run.config.sample_tokens),
        }
        for p, b in zip(prompts, before)
    ]


def train(config: TrainConfig) -> dict[str, Any]:
    """Fine-tunes as ``config`` says; returns the run summary (see records.summarize).

    Raises:
        KeyError: unknown attention name. ValueError/FileNotFoundError: unknown model, bad data.
        TrainingError: run folder conflicts, NaN loss, out of memory.
    """
    run = prepare(config)
    prompts = held_out_prompts(config.data) if config.sample and run.is_main else []
    before = [answer(run.model, run.tokenizer, p, config.sample_tokens) for p in prompts]
    trainer = Trainer(run)
    run.model.train()
    mx.reset_peak_memory()
    # The starting validation loss comes before the first step, as in mlx-lm: evaluating between
    # steps 1 and 2 (uncompiled, other shapes) made step 2 cost ~0.3 s instead of ~45 ms (H100).
    if run.splits.valid is not None and run.start < config.iters:
        trainer.validate(run.start)
    _run_iterations(trainer)
    trainer.close()
    summary = records.summarize(records.read(run.writer.path)) if run.is_main and run.writer.path else {}
    summary.update(
        run_dir=str(run.run_dir), model=run.info.label, attn=config.attn, trainable_params=run.trainable_params
    )
    if prompts:
        summary["samples"] = _samples(run, prompts, before)
    return summary
