"""Length-sorted, padded, seeded and resumable batches (layout in flashtune.data's docstring)."""

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from .jsonl import Dataset, Example
from .shapes import padded_length, round_up


class Batch(NamedTuple):
    """One training batch; see the module docstring for the exact layout."""

    inputs: mx.array  # int32 (B, L)
    targets: mx.array  # int32 (B, L)
    mask: mx.array  # float32 (B, L)
    segments: mx.array | None = None  # int32 (B, L) document ids of a packed batch (-1: padding)
    documents: int = 0  # examples in the batch
    input_tokens: int = 0  # slots holding example tokens (the rest is padding)

    @property
    def arrays(self) -> tuple:
        """What the model's step takes: (inputs, targets, mask) and, when packed, segments."""
        if self.segments is None:
            return self.inputs, self.targets, self.mask
        return self.inputs, self.targets, self.mask, self.segments

    def rows(self, index) -> "Batch":
        """The rows ``index`` selects (a slice), e.g. one rank's share of a data-parallel batch."""
        arrays = [None if a is None else a[index] for a in (self.inputs, self.targets, self.mask, self.segments)]
        return Batch(*arrays)

    @property
    def ntokens(self) -> int:
        """Number of targets that count in the loss."""
        return int(self.mask.sum().item())


def batch_indices(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Fixed batches of example indices, sorted by length; the last batch overlaps its neighbour.

    Args:
        lengths: token count of each example.
        batch_size: examples per batch.

    Returns:
        One list of indices per batch, each of exactly ``batch_size``.
    """
    n = len(lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < batch_size:
        raise ValueError(f"the dataset has {n} examples, fewer than batch_size={batch_size}")
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    starts = list(range(0, n - batch_size + 1, batch_size))
    if starts[-1] + batch_size < n:  # keep the longest examples instead of dropping them
        starts.append(n - batch_size)
    return [order[s : s + batch_size] for s in starts]


def num_batches(dataset: Dataset, batch_size: int) -> int:
    """Batches per epoch."""
    return len(batch_indices(dataset.lengths, batch_size))


def epoch_order(n_batches: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of batch indices for one epoch; a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n_batches)


def make_batch(
    examples: Sequence[Example], pad_id: int = 0, pad_to_multiple: int = 1, pad_lengths: Sequence[int] | None = None
) -> Batch:
    """Pad examples into a `Batch`.

    Args:
        examples: the examples of the batch.
        pad_id: token used for padding inputs and targets.
        pad_to_multiple: round the input length up to a multiple of this.
        pad_lengths: instead, pad to the smallest of these lengths that holds the batch
            (see flashtune.data.shapes).

    Returns:
        The `Batch` (inputs, targets int32; mask float32; all (B, L)).
    """
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    longest = longest_input(examples)
    L = padded_length(longest, pad_lengths) if pad_lengths else round_up(longest, pad_to_multiple)
    inputs = np.full((len(examples), L), pad_id, dtype=np.int32)
    targets = np.full((len(examples), L), pad_id, dtype=np.int32)
    mask = np.zeros((len(examples), L), dtype=np.float32)
    for row, e in enumerate(examples):
        n = len(e.tokens) - 1
        inputs[row, :n] = e.tokens[:-1]
        targets[row, :n] = e.tokens[1:]
        mask[row, max(e.offset - 1, 0) : n] = 1.0  # target j is token j+1
    real = sum(len(e.tokens) - 1 for e in examples)
    return Batch(mx.array(inputs), mx.array(targets), mx.array(mask), documents=len(examples), input_tokens=real)


def longest_input(examples: Sequence[Example]) -> int:
    """The unpadded length of a batch of these examples (inputs are one token shorter)."""
    return max(len(e.tokens) for e in examples) - 1


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    pad_to_multiple: int = 1,
    pad_lengths: Sequence[int] | None = None,
    pad_id: int | None = None,
    **order,
) -> Iterator[Batch]:
    """Yield padded batches in a deterministic, resumable order.

    Args:
        dataset: a tokenized split (checked with `check_lengths` already).
        batch_size: examples per batch.
        pad_to_multiple: round each batch's length up to a multiple of this.
        pad_lengths: instead, pad each batch to the smallest of these lengths that holds it.
        pad_id: padding token; None uses the dataset's (the tokenizer's pad or EOS token).
        **order: ``seed``, ``start_step``, ``num_steps``, ``loop``: see `batch_examples`.

    Returns:
        An iterator of `Batch`.
    """
    pad_id = dataset.pad_id if pad_id is None else pad_id
    for examples in batch_examples(dataset, batch_size, **order):
        yield make_batch(examples, pad_id, pad_to_multiple, pad_lengths)


def batch_examples(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    loop: bool = True,
) -> Iterator[list[Example]]:
    """The examples of each batch, unpadded, in a deterministic, resumable order.

    Args:
        dataset: a tokenized split.
        batch_size: examples per batch.
        seed: decides the order of batches in each epoch.
        start_step: index of the first batch to yield (the number of steps already done when
            resuming); the k-th batch yielded is step ``start_step + k``.
        num_steps: stop after this many batches (None: no limit with ``loop``).
        loop: go on epoch after epoch; False stops at the end of the epoch holding start_step
            (one pass, e.g. for validation).
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    plan = batch_indices(dataset.lengths, batch_size)
    step, produced, order_epoch, order = start_step, 0, None, None
    while num_steps is None or produced < num_steps:
        epoch, position = divmod(step, len(plan))
        if not loop and step > start_step and position == 0:
            return
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(plan), seed, epoch), epoch
        yield [dataset.examples[i] for i in plan[order[position]]]
        step += 1
        produced += 1
