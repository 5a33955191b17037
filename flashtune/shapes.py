"""Which padded batch lengths a run uses: few enough that compiling the step stays cheap, close
enough to each batch's own length that padding stays cheap.

The trainer compiles its step once per distinct batch shape (as mlx-lm does), and a batch may be
padded to any length at or above its longest example without changing the loss (padding is
masked out and sits after the real tokens). Batch order is a pure function of the seed, so the
lengths of every batch of a run are known before it starts; `plan_lengths` picks the set of
padded lengths ("buckets") that minimizes a cost model of the run:

    sum over buckets of compile_steps + sum over batches of step(bucket) / step(longest)

with ``step(L) / step(longest) = max(floor, L / longest)``: a step's time grows with its length
until it hits a per-step floor (kernel dispatch on a GPU). Both numbers are in units of one step
at the longest length, so they carry over between models of similar size on one device.

Measured (H100, TinyLlama-1.1B, batch 4, bf16, 100 iterations on 300-1020-token text; results/
2026-11-24-h100-session3/ablation/no-plan-no-pipeline): a new shape's first step costs 0.34-0.38 s
more than the next ones, 6-7 steps of 56 ms at 4 x 1024; steps at 4 x 512 and 4 x 768 took 44 and
46 ms, 0.78-0.81 of the 1024 one (dispatch-bound). Planned lengths took that run from 7.0 s to
6.2 s (same folder, plan-no-pipeline). On the Linux CPU the step is compute-bound and compiling
is cheap next to a step of seconds. No Apple hardware was available to measure Metal: it gets the
CPU's model.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence


@dataclass(frozen=True)
class ShapeCosts:
    """A device's cost model, in units of one step at the run's longest length."""

    compile_steps: float  # what a new shape's compile costs
    floor: float  # a step never gets cheaper than this
    granularity: int  # padded lengths are multiples of this (CUDA: 128, for cuDNN's backward)


COSTS: Dict[str, ShapeCosts] = {
    "cuda": ShapeCosts(compile_steps=6.0, floor=0.75, granularity=128),
    "cpu": ShapeCosts(compile_steps=0.3, floor=0.0, granularity=32),
    "metal": ShapeCosts(compile_steps=0.3, floor=0.0, granularity=32),
}


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def plan_lengths(batch_lengths: Sequence[int], costs: ShapeCosts) -> List[int]:
    """The padded lengths that minimize the cost model for batches of these lengths.

    Args:
        batch_lengths: the longest input of each batch the run will see, in any order.
        costs: the device's `ShapeCosts`.

    Returns:
        Sorted padded lengths; every batch fits the smallest one at or above its length, and the
        last one is the longest batch rounded up to the granularity.
    """
    if not batch_lengths:
        raise ValueError("plan_lengths needs at least one batch length")
    counts: Dict[int, int] = {}
    for length in batch_lengths:
        rounded = round_up(max(int(length), 1), costs.granularity)
        counts[rounded] = counts.get(rounded, 0) + 1
    lengths = sorted(counts)
    longest = lengths[-1]

    def step(length: int) -> float:
        return max(costs.floor, length / longest)

    # best[i]: cheapest plan for lengths[:i] whose largest bucket is lengths[i - 1]. Exact
    # dynamic programming over at most a few dozen distinct lengths.
    best, choice = [0.0] + [float("inf")] * len(lengths), [0] * (len(lengths) + 1)
    for i in range(1, len(lengths) + 1):
        edge_cost = step(lengths[i - 1])
        batches = 0
        for j in range(i - 1, -1, -1):  # bucket (lengths[j], lengths[i - 1]]
            batches += counts[lengths[j]]
            cost = best[j] + costs.compile_steps + batches * edge_cost
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
