"""poc's Metal kernels (forward, dQ, dK/dV) run under the CPU emulator against float64.

The launches are the ones ``metal.forward`` / ``metal.backward`` build for mx.fast.metal_kernel,
with the same source, template constants, grid and threadgroup; the emulator checks bounds,
threadgroup-memory races, barriers and simd_sum participation while they run.
"""

import mlx.core as mx
import pytest

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention.kernels import metal
from flashtune.attention.kernels import metal_emulator as emulator
from tests.attention.kernels.metal_cases import (
    VARIANTS,
    Problem,
    assert_close,
    expected,
    inputs,
    run,
    variant_id,
)

# (B, Hq, Hkv, Lq, Lk): odd lengths 1, 7, 65, 127, 129; Lq != Lk both ways; GQA 1, 3, 8.
SHAPES = [
    (1, 2, 2, 1, 1),
    (2, 3, 1, 7, 7),
    (1, 8, 1, 65, 65),
    (1, 3, 3, 127, 127),
    (1, 6, 2, 129, 129),
    (1, 8, 1, 1, 129),
    (1, 3, 1, 65, 127),
    (2, 2, 2, 129, 7),
    (1, 3, 1, 127, 65),
]


def check(problem: Problem, seed: int = 0, checked: bool = True):
    q, k, v, d_out = inputs(problem, seed)
    scale = problem.head_dim**-0.5
    got = run(emulator.kernels(checked), q, k, v, d_out, scale, problem.causal)
    want = expected(q, k, v, d_out, scale, "causal" if problem.causal else None)
    return assert_close(got, want, problem.dtype, str(problem)), got


@pytest.mark.parametrize("D, dtype, causal", VARIANTS, ids=[variant_id(*v) for v in VARIANTS])
def test_every_variant_matches_float64(D, dtype, causal):
    """Every head dim, dtype and mask on GQA 3 with Lq < Lk and partial tiles and row blocks."""
    check(Problem(1, 6, 2, 65, 129, D, dtype, causal), seed=D)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "nomask"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}/{}-Lq{}-Lk{}".format(*s))
def test_shape_classes_match_float64(shape, causal):
    """Each shape class, with the head dim and dtype cycling so the classes meet many variants."""
    if causal and shape[3] > shape[4]:
        pytest.skip("causal with Lq > Lk is split off by contract.conforming before the kernels")
    i = SHAPES.index(shape)
    D = metal.HEAD_DIMS[i % len(metal.HEAD_DIMS)]
    check(Problem(*shape, D, metal.DTYPES[i % 2], causal), seed=i)


def test_unchecked_build_gives_the_same_bits():
    """The fast build (no bounds or race checks) computes exactly what the checked one does."""
    problem = Problem(1, 4, 2, 33, 47, 32, mx.float16, True)
    _, checked = check(problem, checked=True)
    _, fast = check(problem, checked=False)
    for name in checked:
        assert mx.array_equal(checked[name], fast[name], equal_nan=True), name


def test_launches_use_what_the_grid_promises():
    """One threadgroup per 8 rows per head, 256 threads each, and 2 float32 tiles of TILE x D
    in threadgroup memory (the dK/dV pass adds two TILE vectors), within 32 KB."""
    problem = Problem(2, 4, 2, 20, 37, 128, mx.bfloat16, False)
    q, k, v, d_out = inputs(problem)
    fwd = emulator.execute(metal.forward_launch(q, k, v, 0.1, False)).stats
    assert fwd.threadgroups == 2 * 4 * 3 and fwd.threads == fwd.threadgroups * 256
    assert fwd.threadgroup_bytes == 2 * metal.TILE * 128 * 4
    assert fwd.barriers == fwd.threadgroups * 2 * 3  # two per K/V tile, 3 tiles of 37 keys
    out, lse = metal.forward(q, k, v, 0.1, False, run=emulator.run)
    _, dkdv = metal.backward_launches(q, k, v, out, lse, d_out, 0.1, False)
    stats = emulator.execute(dkdv).stats
    assert stats.threadgroups == 2 * 2 * 5
    assert stats.threadgroup_bytes == 2 * metal.TILE * 128 * 4 + 2 * 64
    assert stats.threadgroup_bytes <= 32768
