"""Which padded batch lengths a run uses: few enough that compiling the step stays cheap, close
enough to each batch's own length that padding stays cheap.

The trainer compiles its step once per distinct batch shape (as mlx-lm does), and a batch may be
padded to any length at or above its longest example without changing the loss (padding is
masked out and sits after the real tokens). Batch order is a pure function of the seed, so the
lengths of every batch of a run are known before it starts; `plan_lengths` picks the set of
padded lengths ("buckets") that minimizes a cost model of the run, in units of one token of step
work:

    compile_tokens per bucket + sum over batches of max(floor_tokens, rows x bucket length)

A step's time grows with its tokens until it hits a per-step floor: on a GPU the host dispatching
the step's ~1,800 kernels, which the pipelined trainer overlaps with the device's work, so below
the floor padding is free. Both numbers are per device, measured with the trainer's defaults.

Measured on an H100 with the fine-tuning benchmark (TinyLlama-1.1B and Qwen2.5-1.5B, batch 4,
bf16, pipelined, fused projections; `flashtune train --init random --fixed-length 768` against
1024): steps padded to 4 x 768 and 4 x 1024 took the same time (medians 44.3 vs 45.2 ms
TinyLlama, 54.5 vs 49.9 ms Qwen), so 4 x 1024 = 4,096 tokens is still dispatch-bound:
floor_tokens = 4096. A new shape's first step cost ~310 ms more than the next (358 ms against
44 ms), ~7 floor steps: compile_tokens = 7 x 4096. Without pipelining, 4 x 768 cost 0.78-0.81 of
4 x 1024 and two shapes won. On the Linux CPU the step is compute-bound and compiling is cheap next to a step of seconds. No
Apple hardware was available to measure Metal: it gets the CPU's model.
"""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeCosts:
    """A device's cost model, in units of one token of step work."""

    compile_tokens: float  # what a new shape's compile costs
    floor_tokens: float  # a step never costs less than one of this many tokens
    granularity: int  # padded lengths are multiples of this (CUDA: 128, for cuDNN's backward)


COSTS: dict[str, ShapeCosts] = {
    "cuda": ShapeCosts(compile_tokens=7 * 4096, floor_tokens=4096, granularity=128),
    "cpu": ShapeCosts(compile_tokens=64, floor_tokens=0, granularity=32),
    "metal": ShapeCosts(compile_tokens=64, floor_tokens=0, granularity=32),
}


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def plan_lengths(batch_lengths: Sequence[int], costs: ShapeCosts, rows: int = 1) -> list[int]:
    """The padded lengths that minimize the cost model for batches of these lengths.

    Args:
        batch_lengths: the longest input of each batch the run will see, in any order.
        costs: the device's `ShapeCosts`.
        rows: sequences per step (the batch a process computes at once).

    Returns:
        Sorted padded lengths; every batch fits the smallest one at or above its length, and the
        last one is the longest batch rounded up to the granularity.
    """
    if not batch_lengths:
        raise ValueError("plan_lengths needs at least one batch length")
    counts: dict[int, int] = {}
    for length in batch_lengths:
        rounded = round_up(max(int(length), 1), costs.granularity)
        counts[rounded] = counts.get(rounded, 0) + 1
    lengths = sorted(counts)

    def step(length: int) -> float:
        return max(costs.floor_tokens, rows * length)

    # best[i]: cheapest plan for lengths[:i] whose largest bucket is lengths[i - 1]. Exact
    # dynamic programming over at most a few dozen distinct lengths.
    best, choice = [0.0] + [float("inf")] * len(lengths), [0] * (len(lengths) + 1)
    for i in range(1, len(lengths) + 1):
        edge_cost = step(lengths[i - 1])
        batches = 0
        for j in range(i - 1, -1, -1):  # bucket (lengths[j], lengths[i - 1]]
            batches += counts[lengths[j]]
            cost = best[j] + costs.compile_tokens + batches * edge_cost
            if cost < best[i]:
                best[i], choice[i] = cost, j
    plan, i = [], len(lengths)
    while i:
        plan.append(lengths[i - 1])
        i = choice[i]
    return sorted(plan)


def padded_length(length: int, plan: Sequence[int]) -> int:
    """The smallest planned length that holds ``length``."""
    for edge in plan:
        if edge >= length:
            return edge
    raise ValueError(f"batch length {length} is longer than every planned length {list(plan)}")
