"""Per-iteration bookkeeping of the training loop: which iterations are in flight, waiting for
them in order, and the record each one leaves (see flashtune.train.records for the format).

The trainer dispatches iteration i+1 before it waits for iteration i (``--pipeline``), so an
iteration's wall time runs from when its host work began, or from the end of the previous
iteration when it was dispatched before that ended; their sum is the loop's busy time.
"""

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlx.core as mx

from flashtune.errors import TrainingError, is_out_of_memory


@dataclass
class Iteration:
    """A dispatched iteration whose results the host has not waited for yet."""

    it: int
    tic: float  # when its host work began
    shapes: list[tuple]  # (batch, length) of each micro-batch
    documents: int = 0  # examples in the iteration (all ranks)
    input_tokens: int = 0  # slots holding example tokens, padding excluded (all ranks)
    loss: mx.array | None = None
    tokens: mx.array | None = None
    lr: mx.array | None = None


@contextmanager
def out_of_memory_advice(iteration: Iteration):
    """Turns MLX's allocation failure during ``iteration`` into advice."""
    try:
        yield
    except RuntimeError as error:
        if is_out_of_memory(error):
            raise TrainingError(
                f"out of memory at iteration {iteration.it} with batch {iteration.shapes[0]} (batch x length): {error}. "
                "Try --no-pipeline (one step in flight instead of two), a smaller --batch-size, "
                "--grad-accumulation with a smaller batch, --grad-checkpoint, or a shorter --max-seq-length."
            ) from error
        raise


@dataclass
class IterationLog:
    """Waits for iterations in order and writes their records.

    Args:
        write: takes one record (a dict).
        show: takes each record, for the progress bar.
        nan_stop: called with (iteration, loss) when the loss is not finite; must raise.
        fields: constant fields of every record (attn, model, world_size).
        compiled: whether a new batch shape means a compile (then the record says ``warmup``).
    """

    write: Callable[[dict], None]
    show: Callable[[dict], None]
    nan_stop: Callable[[int, float], None]
    fields: dict
    compiled: bool
    completed: int = 0  # the last iteration waited for
    _last_done: float = 0.0
    _seen_shapes: set[tuple] = field(default_factory=set)

    def complete(self, iteration: Iteration) -> None:
        with out_of_memory_advice(iteration):
            loss = iteration.loss.item()
        done = time.perf_counter()
        wall, self._last_done = done - max(iteration.tic, self._last_done), done
        if not math.isfinite(loss):
            self.nan_stop(iteration.it, loss)
        new_shape = any(s not in self._seen_shapes for s in iteration.shapes)
        self._seen_shapes.update(iteration.shapes)
        tokens = int(iteration.tokens.item())
        peak_gb = mx.get_peak_memory() / 1e9
        world_size = self.fields.get("world_size", 1)
        record = {
            "iter": iteration.it,
            "wall_s": wall,
            "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "loss": loss,
            "lr": float(iteration.lr.item()),
            "peak_mem_gb": peak_gb,
            **self.fields,
            "shape": list(iteration.shapes[0]),
            "padded_tokens": sum(b * n for b, n in iteration.shapes) * world_size,
            "documents": iteration.documents,
            "input_tokens": iteration.input_tokens,
            "warmup": new_shape and self.compiled,
        }
        self.write(record)
        self.completed = iteration.it
        self.show(record)

    def pause(self) -> None:
        """What happens until the next dispatch (evaluation, saving) stays out of its wall time."""
        self._last_done = 0.0
