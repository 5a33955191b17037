"""The padded-length planner: exact against brute force, and the measured H100 case."""

import itertools
import random

import pytest

from flashtune.data import shapes
from flashtune.data.shapes import ShapeCosts, padded_length, plan_lengths


def cost_of(plan, lengths, costs, rows):
    return len(plan) * costs.compile_tokens + sum(
        max(costs.floor_tokens, rows * padded_length(shapes.round_up(n, costs.granularity), plan)) for n in lengths
    )


def test_measured_h100_cases():
    # 100 TinyLlama iterations on 300-1020-token text, batch 4: batches at 512, 768 and 1024
    # (multiples of 128), all under the dispatch floor of 4,096 tokens: one compile.
    lengths = [500] * 32 + [700] * 32 + [1000] * 36
    assert plan_lengths(lengths, shapes.COSTS["cuda"], rows=4) == [1024]
    # Twice the rows: shorter steps are cheaper again, and each shape pays for its compile.
    assert plan_lengths(lengths, shapes.COSTS["cuda"], rows=8) == [512, 768, 1024]


def test_free_compiles_keep_every_length_and_costly_ones_keep_one():
    lengths = [40, 70, 100, 130]
    assert plan_lengths(lengths, ShapeCosts(0.0, 0.0, 32)) == [64, 96, 128, 160]
    assert plan_lengths(lengths, ShapeCosts(1e6, 0.0, 32)) == [160]
    assert plan_lengths([1], ShapeCosts(1.0, 0.0, 128)) == [128]


@pytest.mark.parametrize("seed", range(20))
def test_plan_is_the_cheapest_of_all_bucket_sets(seed):
    rng = random.Random(seed)
    costs = ShapeCosts(
        compile_tokens=rng.choice([50, 300, 2000]), floor_tokens=rng.choice([0, 200, 600]), granularity=32
    )
    rows = rng.choice([1, 2, 4])
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))]
    distinct = sorted({shapes.round_up(n, 32) for n in lengths})
    candidates = [
        sorted(set(subset) | {distinct[-1]})
        for r in range(len(distinct))
        for subset in itertools.combinations(distinct[:-1], r)
    ]
    best = min(cost_of(c, lengths, costs, rows) for c in candidates)
    plan = plan_lengths(lengths, costs, rows)
    assert plan[-1] == distinct[-1]
    assert cost_of(plan, lengths, costs, rows) == pytest.approx(best)


def test_lengths_outside_the_plan_and_empty_input_are_errors():
    with pytest.raises(ValueError, match=r"batch length 300 is longer than every planned length \[128, 256\]"):
        padded_length(300, [128, 256])
    with pytest.raises(ValueError, match="at least one"):
        plan_lengths([], shapes.COSTS["cpu"])
