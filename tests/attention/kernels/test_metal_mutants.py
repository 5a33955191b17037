"""Deliberately broken copies of poc's Metal kernels must fail under the emulator.

Each mutant is one textual edit of the real source (metal_cases.mutated), run on a problem the
real kernel passes, and must fail in the way named: an emulator error or a mismatch with float64.
"""

import dataclasses

import mlx.core as mx
import pytest

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention.kernels import metal
from flashtune.attention.kernels import metal_emulator as emulator
from tests.attention.kernels.metal_cases import (
    TOLERANCE,
    Problem,
    assert_close,
    expected,
    inputs,
    mutated,
    run,
)

BARRIER = "threadgroup_barrier(mem_flags::mem_threadgroup);"


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    kernel: metal.Kernel
    old: str
    new: str
    problem: Problem
    error: str | None = None  # a regex the EmulationError must match
    mismatch: tuple[str, ...] = ()  # outputs that must be off the float64 reference

    def __str__(self):
        return self.name


MUTANTS = [
    Mutant(
        "forward-no-barrier-before-overwriting-a-tile",
        metal.FORWARD,
        f"n0 += TILE) {{\n        {BARRIER}\n",
        "n0 += TILE) {\n",
        Problem(1, 2, 1, 9, 40),
        error=r"data race on threadgroup [KV]s\[\d+\]: written after a read",
    ),
    Mutant(
        "forward-no-barrier-between-load-and-use",
        metal.FORWARD,
        f"        }}\n        {BARRIER}\n        float s[TILE];",
        "        }\n        float s[TILE];",
        Problem(1, 2, 1, 9, 40),
        error=r"data race on threadgroup Ks\[\d+\]: (read|written) after a (write|read) by thread",
    ),
    Mutant(
        "dq-tile-bound-off-by-one",
        metal.DQ,
        "const bool ok = n0 + r < Lk;",
        "const bool ok = n0 + r <= Lk;",
        Problem(1, 2, 1, 9, 40),
        error=r"buffer k\[\d+\] is out of bounds",
    ),
    Mutant(
        "forward-causal-loop-ends-one-key-early",
        metal.FORWARD,
        "min(Lk, m0 + ROWS + offset)",
        "min(Lk, m0 + ROWS - 1 + offset)",
        Problem(1, 2, 1, 65, 66, causal=True),
        mismatch=("out", "lse"),
    ),
    Mutant(
        "dkdv-causal-query-tiles-start-one-row-late",
        metal.DKDV,
        "max(0, n0 - offset)",
        "max(0, n0 - offset + 1)",
        Problem(1, 2, 1, 33, 33, causal=True),
        mismatch=("dk", "dv"),
    ),
    Mutant(
        "forward-tiles-over-32KB",
        metal.FORWARD,
        "threadgroup float Ks[TILE * D];",
        "threadgroup float Ks[4 * TILE * D];",
        Problem(1, 2, 1, 9, 40, head_dim=128),
        error=r"threadgroup memory exceeds the 32768 bytes.*Ks 32768 \+ Vs 8192",
    ),
    Mutant(
        "dkdv-lse-of-rows-past-Lq-left-unset",
        metal.DKDV,
        "Ls[r] = ok ? lse[qbase + m0 + r] : INFINITY;",
        "if (ok) Ls[r] = lse[qbase + m0 + r];",
        Problem(1, 2, 1, 7, 7),
        mismatch=("dk", "dv"),
    ),
    Mutant(
        "forward-padding-rows-return-early",
        metal.FORWARD,
        "float m = -INFINITY, l = 0.0f;",
        "float m = -INFINITY, l = 0.0f;\n    if (row >= Lq) return;",
        Problem(1, 2, 1, 7, 7),
        error=r"threadgroup_barrier at line \d+:\d+ is reached by threads 0-223 only; "
        r"threads 224-255 have exited",
    ),
    Mutant(
        "forward-lanes-without-head-dim-work-skip-simd_sum",
        metal.FORWARD,
        "float x = simd_sum(part) * scale_log2;",
        "float x = lane * 4 < D ? simd_sum(part) * scale_log2 : 0.0f;",
        Problem(1, 2, 1, 9, 9, head_dim=32),
        error=r"simd_sum at line \d+:\d+ in simdgroup 0 is reached by lanes 0-7 only",
    ),
    Mutant(
        "dkdv-every-simdgroup-writes-the-first-key",
        metal.DKDV,
        "dk[(kbase + key) * D + d]",
        "dk[(kbase + n0) * D + d]",
        Problem(1, 2, 1, 9, 9),
        error=r"buffer dk\[\d+\] is written by two threads",
    ),
]


@pytest.mark.parametrize("mutant", MUTANTS, ids=str)
def test_mutant_fails_as_named(mutant):
    p = mutant.problem
    q, k, v, d_out = inputs(p)
    scale = p.head_dim**-0.5
    want = expected(q, k, v, d_out, scale, "causal" if p.causal else None)
    assert_close(run(emulator.kernels(), q, k, v, d_out, scale, p.causal), want, p.dtype, "real kernel")
    broken = mutated(mutant.kernel, mutant.old, mutant.new)
    if mutant.error:
        with pytest.raises(emulator.EmulationError, match=mutant.error) as info:
            run(broken, q, k, v, d_out, scale, p.causal)
        assert mutant.kernel.name in str(info.value)
        return
    with pytest.raises(AssertionError) as info:
        assert_close(run(broken, q, k, v, d_out, scale, p.causal), want, p.dtype, str(mutant), names=mutant.mismatch)
    for name in mutant.mismatch:
        assert f"'{name}'" in str(info.value).split("; all:")[0], str(info.value)


def test_oversized_tiles_are_measured_per_head_dim():
    """The 32 KB check counts what each variant declares: the 4x K tile fits at head dim 64."""
    mutant = next(m for m in MUTANTS if m.name == "forward-tiles-over-32KB")
    p = dataclasses.replace(mutant.problem, head_dim=64)
    q, k, v, d_out = inputs(p)
    launch = metal.forward_launch(q, k, v, 0.125, False)
    source = launch.kernel.source.replace(mutant.old, mutant.new)
    broken = dataclasses.replace(launch.kernel, source=source)
    result = emulator.execute(dataclasses.replace(launch, kernel=broken))
    assert result.stats.threadgroup_bytes == 5 * metal.TILE * 64 * 4 <= 32768
    want = expected(q, k, v, d_out, 0.125, None)
    errors = assert_close({"out": result.outputs[0]}, want, p.dtype, "4x K tile at D=64", names=("out",))
    assert errors["out"] <= TOLERANCE[mx.bfloat16]
