"""Sequence packing: several examples per row, kept apart by per-document attention.

A padded batch spends every slot past each example's end on padding; packed, a row of
``pack_length`` slots holds as many examples as fit, one after another. Each slot carries the
index of its document in the row (``segments``: 0, 1, 2, ...; -1 for padding), which every
attention implementation turns into a block-diagonal mask (see flashtune.attention.contract),
so no token attends to another document. Inputs and targets are cut per example exactly as in
a padded batch (target j is token j+1 of the same example), so no token is predicted from the
previous document. RoPE needs no change: attention within one document depends only on
relative positions.

Rows are filled best-fit-decreasing (longest example first, into the fullest row it still fits),
a deterministic function of the example lengths; consecutive rows form batches of
``batch_size`` rows (the last one filled up with empty rows, so every step has one shape), and
each epoch visits the batches in the seeded order of `flashtune.data.batches.epoch_order`. Step
k of a run is therefore a pure function of (dataset, batch_size, pack_length, seed, k), and a
resumed run continues exactly.
"""

import bisect
from collections.abc import Iterator, Sequence

import mlx.core as mx
import numpy as np

from flashtune.errors import SequenceTooLongError

from .batches import Batch, epoch_order
from .jsonl import Dataset, Example


def input_length(example: Example) -> int:
    """Slots an example takes in a row: its inputs, one token shorter than the example."""
    return len(example.tokens) - 1


def check_fits(dataset: Dataset, pack_length: int) -> None:
    """Raises SequenceTooLongError naming the longest example when one exceeds a row."""
    if pack_length < 1:
        raise ValueError(f"pack_length must be >= 1, got {pack_length}")
    longest = max(dataset.examples, key=input_length)
    if input_length(longest) > pack_length:
        too_long = sum(input_length(e) > pack_length for e in dataset.examples)
        raise SequenceTooLongError(
            f"{too_long} example(s) of {dataset.path} do not fit a packed row of {pack_length} tokens; the longest, "
            f"{longest.source}, has {input_length(longest)} inputs. Raise --pack-length, or pass --truncate to cut "
            f"examples to max_seq_length (it must then be at most pack_length + 1 = {pack_length + 1})."
        )


def pack_rows(lengths: Sequence[int], pack_length: int) -> list[list[int]]:
    """Best-fit-decreasing: example indices per row, each row's lengths summing to <= pack_length.

    Args:
        lengths: slots each example takes (all <= pack_length).
        pack_length: slots per row.

    Returns:
        Rows of example indices, fullest first; within a row, examples in placement order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    # (space left, row index), sorted: the best fit is the first entry with enough space.
    free: list[tuple] = []
    for i in order:
        n = lengths[i]
        slot = bisect.bisect_left(free, (n, -1))
        if slot == len(free):
            rows.append([i])
            bisect.insort(free, (pack_length - n, len(rows) - 1))
            continue
        space, row = free.pop(slot)
        rows[row].append(i)
        bisect.insort(free, (space - n, row))
    return rows


def make_packed_batch(rows: Sequence[Sequence[Example]], pack_length: int, pad_id: int = 0) -> Batch:
    """Concatenates each row's examples into one padded row with document ids.

    Args:
        rows: the examples of each row (an empty row is all padding).
        pack_length: slots per row.
        pad_id: token used for padding inputs and targets.

    Returns:
        The `Batch`: inputs, targets int32; mask float32; segments int32 (-1 on padding).
    """
    B = len(rows)
    inputs = np.full((B, pack_length), pad_id, dtype=np.int32)
    targets = np.full((B, pack_length), pad_id, dtype=np.int32)
    mask = np.zeros((B, pack_length), dtype=np.float32)
    segments = np.full((B, pack_length), -1, dtype=np.int32)
    for r, examples in enumerate(rows):
        start = 0
        for doc, e in enumerate(examples):
            n = input_length(e)
            inputs[r, start : start + n] = e.tokens[:-1]
            targets[r, start : start + n] = e.tokens[1:]
            mask[r, start + max(e.offset - 1, 0) : start + n] = 1.0  # target j is token j+1
            segments[r, start : start + n] = doc
            start += n
    return Batch(
        mx.array(inputs),
        mx.array(targets),
        mx.array(mask),
        mx.array(segments),
        documents=sum(len(row) for row in rows),
        input_tokens=int((segments >= 0).sum()),
    )


def packed_batches(dataset: Dataset, batch_size: int, pack_length: int) -> list[list[list[int]]]:
    """Example indices per row per batch for one epoch (the last batch filled with empty rows)."""
    check_fits(dataset, pack_length)
    rows = pack_rows([input_length(e) for e in dataset.examples], pack_length)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    batches[-1] = batches[-1] + [[] for _ in range(batch_size - len(batches[-1]))]
    return batches


def iterate_packed_batches(
    dataset: Dataset,
    batch_size: int,
    pack_length: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    pad_id: int | None = None,
) -> Iterator[Batch]:
    """Packed batches in a deterministic, resumable order (see the module docstring).

    Args:
        dataset: a tokenized split.
        batch_size: rows per batch.
        pack_length: slots per row.
        seed: decides the order of batches in each epoch.
        start_step: index of the first batch to yield (steps already done when resuming).
        num_steps: stop after this many batches (None: go on epoch after epoch).
        pad_id: padding token; None uses the dataset's.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    plan = packed_batches(dataset, batch_size, pack_length)
    pad_id = dataset.pad_id if pad_id is None else pad_id
    step, order, order_epoch = start_step, None, None
    while num_steps is None or step < start_step + num_steps:
        epoch, position = divmod(step, len(plan))
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(plan), seed, epoch), epoch
        rows = [[dataset.examples[i] for i in row] for row in plan[order[position]]]
        yield make_packed_batch(rows, pack_length, pad_id)
        step += 1


def efficiency(dataset: Dataset, batch_size: int, pack_length: int) -> float:
    """Share of an epoch's slots that hold example tokens (1.0: no padding at all)."""
    plan = packed_batches(dataset, batch_size, pack_length)
    used = sum(input_length(e) for e in dataset.examples)
    return used / (len(plan) * batch_size * pack_length)
