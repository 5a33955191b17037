"""The padded-length planner: exact against brute force, and the measured H100 case."""

import itertools
import random

import pytest

from flashtune import shapes
from flashtune.shapes import ShapeCosts, padded_length, plan_lengths


def cost_of(plan, lengths, costs):
    longest = plan[-1]
    return len(plan) * costs.compile_steps + sum(
        max(costs.floor, padded_length(shapes.round_up(n, costs.granularity), plan) / longest) for n in lengths
    )


def test_measured_h100_case_merges_the_dispatch_bound_lengths():
    # 100 TinyLlama iterations on 300-1020-token text: batches at 512, 768 and 1024 (multiples of
    # 128); 512 and 768 steps cost the same (dispatch floor), so they share one compile.
    lengths = [500] * 32 + [700] * 32 + [1000] * 36
    assert plan_lengths(lengths, shapes.COSTS["cuda"]) == [768, 1024]


def test_free_compiles_keep_every_length_and_costly_ones_keep_one():
    lengths = [40, 70, 100, 130]
    assert plan_lengths(lengths, ShapeCosts(0.0, 0.0, 32)) == [64, 96, 128, 160]
    assert plan_lengths(lengths, ShapeCosts(1e6, 0.0, 32)) == [160]
    assert plan_lengths([1], ShapeCosts(1.0, 0.0, 128)) == [128]


@pytest.mark.parametrize("seed", range(20))
def test_plan_is_the_cheapest_of_all_bucket_sets(seed):
    rng = random.Random(seed)
    costs = ShapeCosts(compile_steps=rng.choice([0.5, 2.0, 6.0]), floor=rng.choice([0.0, 0.5, 0.8]), granularity=32)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))]
    distinct = sorted({shapes.round_up(n, 32) for n in lengths})
    candidates = [
        sorted(set(subset) | {distinct[-1]})
        for r in range(len(distinct))
        for subset in itertools.combinations(distinct[:-1], r)
    ]
    best = min(cost_of(c, lengths, costs) for c in candidates)
    plan = plan_lengths(lengths, costs)
    assert plan[-1] == distinct[-1]
    assert cost_of(plan, lengths, costs) == pytest.approx(best)


def test_lengths_outside_the_plan_and_empty_input_are_errors():
    with pytest.raises(ValueError, match=r"batch length 300 is longer than every planned length \[128, 256\]"):
        padded_length(300, [128, 256])
    with pytest.raises(ValueError, match="at least one"):
        plan_lengths([], shapes.COSTS["cpu"])
