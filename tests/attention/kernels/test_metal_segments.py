"""Per-document ("segments") attention in poc's Metal kernels, under the emulator, against float64.

Query i sees key j only when their ids are equal and non-negative (and j <= i when causal);
a negative id is padding: its output row is 0, its lse +inf, its gradients 0. The kernels skip
every tile whose documents cannot meet the current block's, and the count of tiles they visit
is checked against the ids.
"""

import mlx.core as mx
import numpy as np
import pytest

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention.kernels import metal
from flashtune.attention.kernels import metal_emulator as emulator
from tests.attention.kernels.metal_cases import (
    Problem,
    assert_close,
    expected,
    inputs,
    mutated,
    run,
)

NO_DOCS = (2**31 - 1, -1)  # the kernels' (lo, hi) of a block with no non-negative id


def packed(lengths: list[int], L: int) -> np.ndarray:
    """Documents of the given lengths one after another (ids 0, 1, ...), then padding (-1)."""
    ids = np.full(L, -1, dtype=np.int32)
    start = 0
    for doc, n in enumerate(lengths):
        ids[start : start + n] = doc
        start += n
    assert start <= L
    return ids


def keep_mask(ids: np.ndarray, causal: bool) -> mx.array:
    """The reference's bool (B, 1, L, L) mask from the ids."""
    keep = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] >= 0)
    if causal:
        keep &= np.tril(np.ones(keep.shape[1:], dtype=bool))
    return mx.array(keep[:, None])


# name -> (B, L) ids
LAYOUTS = {
    "length-1-documents": np.stack([np.arange(37, dtype=np.int32)]),
    "documents-crossing-tiles": np.stack([packed([13, 20, 9, 17, 3, 1], 70)]),
    "rows-ending-in-padding": np.stack([packed([30, 5, 11], 65), packed([64, 1], 65)]),
    "padding-between-documents": np.stack(
        [
            np.concatenate([np.full(10, 0), np.full(5, -1), np.full(20, 1), np.full(3, -1), np.full(12, 2)]).astype(
                np.int32
            )
        ]
    ),
    "interleaved-ids": np.random.default_rng(3).integers(-1, 3, size=(2, 33)).astype(np.int32),
    "all-padding-row": np.stack([packed([9, 8], 40), packed([], 40)]),
}
# (layout, n_heads, n_kv_heads, D, dtype, causal): GQA 1, 3 and 8, both dtypes, both masks.
CASES = [
    ("length-1-documents", 2, 2, 32, mx.bfloat16, True),
    ("length-1-documents", 3, 1, 64, mx.float16, False),
    ("documents-crossing-tiles", 6, 2, 64, mx.bfloat16, True),
    ("documents-crossing-tiles", 8, 1, 128, mx.float16, False),
    ("rows-ending-in-padding", 3, 1, 80, mx.float16, True),
    ("rows-ending-in-padding", 2, 2, 96, mx.bfloat16, False),
    ("padding-between-documents", 8, 1, 32, mx.float16, True),
    ("interleaved-ids", 6, 2, 64, mx.bfloat16, False),
    ("interleaved-ids", 3, 3, 128, mx.bfloat16, True),
    ("all-padding-row", 3, 1, 64, mx.float16, True),
]


def segment_problem(layout: str, n_heads: int, n_kv_heads: int, D: int, dtype, causal: bool):
    ids = LAYOUTS[layout]
    B, L = ids.shape
    return Problem(B, n_heads, n_kv_heads, L, L, D, dtype, causal), ids


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: "{}-H{}/{}-D{}-{}-{}".format(
        c[0], c[1], c[2], c[3], "bf16" if c[4] == mx.bfloat16 else "fp16", "causal" if c[5] else "nomask"
    ),
)
def test_segments_match_float64(case):
    problem, ids = segment_problem(*case)
    q, k, v, d_out = inputs(problem, seed=len(ids.flat))
    scale = problem.head_dim**-0.5
    got = run(emulator.kernels(), q, k, v, d_out, scale, problem.causal, segments=mx.array(ids))
    want = expected(q, k, v, d_out, scale, keep_mask(ids, problem.causal))
    assert_close(got, want, problem.dtype, str(problem))
    padding = ids < 0  # (B, L): exactly zero rows, +inf lse, zero gradients
    for name in ("out", "dq", "dk", "dv"):
        rows = np.array(got[name].astype(mx.float32)).transpose(0, 2, 1, 3)[padding]
        assert np.all(rows == 0), f"{name} is not zero on padding rows"
    assert np.all(np.array(got["lse"]).transpose(0, 2, 1)[padding] == np.inf)


def _docs(ids: np.ndarray) -> tuple[int, int]:
    own = ids[ids >= 0]
    return (int(own.min()), int(own.max())) if own.size else NO_DOCS


def _meets(block: tuple[int, int], tile: tuple[int, int]) -> bool:
    return not (tile[1] < block[0] or tile[0] > block[1])


def visited_tiles(ids: np.ndarray, causal: bool) -> tuple[int, int, int]:
    """Per head: (K/V tiles the forward visits, = dQ's, query tiles dK/dV visits per query head),
    by the kernels' rule: a tile is visited when its id range meets the block's."""
    rows = keys = total = 0
    for seq in ids:
        L = len(seq)
        for m0 in range(0, L, metal.ROWS):
            block = _docs(seq[m0 : m0 + metal.ROWS])
            n_end = min(L, m0 + metal.ROWS) if causal else L
            tiles = range(0, n_end, metal.TILE)
            rows += sum(_meets(block, _docs(seq[n0 : n0 + metal.TILE])) for n0 in tiles)
            total += len(tiles)
        for n0 in range(0, L, metal.ROWS):
            block = _docs(seq[n0 : n0 + metal.ROWS])
            tiles = range(n0 if causal else 0, L, metal.TILE)
            keys += sum(_meets(block, _docs(seq[m0 : m0 + metal.TILE])) for m0 in tiles)
    return rows, keys, total


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "nomask"])
def test_tiles_that_cannot_meet_are_skipped(causal):
    """Two barriers per visited tile: the emulator's barrier count equals the tiles the ids
    allow, and for many short documents that is a small part of all tiles."""
    ids = np.stack([packed([9, 12, 7, 20, 15, 11, 30, 6, 18, 14], 150)])
    problem = Problem(1, 3, 1, 150, 150, 32, mx.bfloat16, causal)
    q, k, v, d_out = inputs(problem)
    segments = mx.array(ids)
    fwd = emulator.execute(metal.forward_launch(q, k, v, 0.2, causal, segments))
    dq_launch, dkdv_launch = metal.backward_launches(q, k, v, *fwd.outputs, d_out, 0.2, causal, segments)
    rows, keys, total = visited_tiles(ids, causal)
    assert fwd.stats.barriers == 2 * rows * 3
    assert emulator.execute(dq_launch).stats.barriers == 2 * rows * 3
    assert emulator.execute(dkdv_launch).stats.barriers == 2 * keys * 3
    assert rows <= 0.3 * total, f"{rows} of {total} tiles visited"
    plain = emulator.execute(metal.forward_launch(q, k, v, 0.2, causal)).stats.barriers
    assert plain == 2 * total * 3


SKIP = "if (tile_hi < docs_lo || tile_lo > docs_hi) continue;"


def test_skipping_too_much_is_caught():
    """An off-by-one in the overlap test skips tiles whose first document starts in the block
    above: only float64 can tell, on documents that cross tiles."""
    problem, ids = segment_problem("documents-crossing-tiles", 2, 1, 32, mx.bfloat16, False)
    q, k, v, d_out = inputs(problem)
    scale = problem.head_dim**-0.5
    want = expected(q, k, v, d_out, scale, keep_mask(ids, False))
    broken = mutated(metal.FORWARD_SEGMENTS, SKIP, SKIP.replace("tile_hi < docs_lo", "tile_hi <= docs_lo"))
    got = run(broken, q, k, v, d_out, scale, False, segments=mx.array(ids))
    with pytest.raises(AssertionError, match="'out'"):
        assert_close(got, want, problem.dtype, "skip too much", names=("out",))


def test_skip_decided_per_row_breaks_the_barriers():
    """The skip must be the threadgroup's decision: deciding it from each simdgroup's own row
    makes simdgroups pass different barriers, which the emulator reports."""
    problem, ids = segment_problem("documents-crossing-tiles", 2, 1, 32, mx.bfloat16, False)
    q, k, v, d_out = inputs(problem)
    per_row = SKIP.replace("tile_hi < docs_lo || tile_lo > docs_hi", "tile_hi < my_doc || tile_lo > my_doc")
    broken = mutated(metal.DQ_SEGMENTS, SKIP, per_row)
    message = r"ftpoc_flash_dq_seg: .*(different barriers|reached by threads)"
    with pytest.raises(emulator.EmulationError, match=message):
        run(broken, q, k, v, d_out, 0.2, False, segments=mx.array(ids))


def test_without_segments_the_launches_are_the_plain_kernels():
    q, k, v, d_out = inputs(Problem(1, 2, 1, 9, 9))
    assert metal.forward_launch(q, k, v, 0.2, True).kernel is metal.FORWARD
    assert "segments" not in metal.FORWARD.source + metal.DQ.source + metal.DKDV.source
    out, lse = metal.forward(q, k, v, 0.2, True, run=emulator.run)
    ids = mx.zeros((1, 9), mx.int32)
    launches = metal.backward_launches(q, k, v, out, lse, d_out, 0.2, True, segments=ids)
    assert [x.kernel for x in launches] == [metal.DQ_SEGMENTS, metal.DKDV_SEGMENTS]


@pytest.mark.parametrize(
    "shapes, segments, message",
    [
        ((9, 9), mx.zeros((1, 8), mx.int32), r"segments \(1, 8\), q \(1, 2, 9, 16\)"),
        ((9, 12), mx.zeros((1, 9), mx.int32), r"Lq == Lk"),
        ((9, 9), mx.zeros((1, 9), mx.float32), r"integer document ids; got mlx.core.float32"),
    ],
)
def test_bad_segments_raise_value_error(shapes, segments, message):
    q = mx.zeros((1, 2, shapes[0], 16), mx.float16)
    k = mx.zeros((1, 1, shapes[1], 16), mx.float16)
    with pytest.raises(ValueError, match=message):
        metal.forward_launch(q, k, k, 0.2, False, segments)
