"""poc's CUDA kernels against a float64 reference, forward and gradients (skips without CUDA).

Rerun on a GPU with: ``pytest tests/attention/test_poc_cuda.py -q``. The kernels are called
directly (not through the self-check, so that a wrong kernel fails loudly here), and once
through ``poc`` to see that the routing picks them.
"""

import mlx.core as mx
import numpy as np
import pytest

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention import get
from flashtune.attention import poc as poc_module
from flashtune.attention.kernels import cuda as cuda_kernels
from tests.attention import reference as ref
from tests.attention.test_contract_segments import assert_padding_is_zero

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not mx.cuda.is_available(), reason="needs MLX's CUDA backend"),
]

# Relative L2 error vs float64. bf16 inputs are rounded the same way for the reference, so
# what remains is P and dS rounded to 8 mantissa bits: ~4e-3 (bf16), ~5e-4 (fp16).
TOLERANCE = {mx.bfloat16: 2e-2, mx.float16: 4e-3}

# (B, Hq, Hkv, Lq, Lk): odd lengths, Lq != Lk both ways, GQA ratios 1, 2, 4, 8.
SHAPES = [
    (1, 2, 2, 1, 1),
    (2, 4, 2, 1, 65),
    (1, 4, 1, 65, 65),
    (2, 8, 2, 127, 127),
    (1, 8, 1, 129, 200),
    (1, 2, 2, 200, 129),
    (1, 4, 4, 1000, 1000),
    (1, 16, 2, 257, 257),
]


def reference(q, k, v, cot, scale, causal):
    """float64 (out, dq, dk, dv) from the contract suite's reference."""
    return ref.attention(q, k, v, scale, "causal" if causal else None, cot)


def random_inputs(shape, D, dtype, seed):
    B, Hq, Hkv, Lq, Lk = shape
    keys = mx.random.split(mx.random.key(seed), 4)
    q = mx.random.normal((B, Hq, Lq, D), key=keys[0]).astype(dtype)
    k = mx.random.normal((B, Hkv, Lk, D), key=keys[1]).astype(dtype)
    v = mx.random.normal((B, Hkv, Lk, D), key=keys[2]).astype(dtype)
    cot = mx.random.normal((B, Hq, Lq, D), key=keys[3]).astype(dtype)
    return q, k, v, cot


def kernel_errors(shape, D, dtype, causal, seed=0, scale=None):
    """Runs the CUDA kernels (forward + vjp) and returns {name: relative error vs float64};
    the scale defaults to D**-0.5."""
    q, k, v, cot = random_inputs(shape, D, dtype, seed)
    scale = D**-0.5 if scale is None else scale

    def attention(q, k, v):
        return poc_module.kernel_function("cuda", scale, causal)(q, k, v)[0]

    (out,), grads = mx.vjp(attention, [q, k, v], [cot])
    mx.eval(out, grads)
    errors = {}
    for name, got, want in zip(("out", "dq", "dk", "dv"), [out, *grads], reference(q, k, v, cot, scale, causal)):
        assert got.dtype == dtype and got.shape == want.shape, name
        errors[name] = ref.relative_error(got, want)  # inf where anything is NaN
    return errors


# (shape, causal) on which each launch shape is checked: Lq != Lk both ways, one row, GQA.
LAUNCH_CASES = [
    ((1, 8, 2, 1000, 1000), True),
    ((2, 4, 2, 127, 300), False),
    ((1, 4, 1, 65, 200), True),
    ((2, 2, 2, 1, 1), True),
    ((1, 4, 4, 129, 129), False),
]


def check(errors, dtype, label):
    bad = {n: e for n, e in errors.items() if not e <= TOLERANCE[dtype]}
    assert not bad, f"{label}: relative errors over {TOLERANCE[dtype]}: {bad} (all: {errors})"


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "nomask"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}-{}_L{}-{}".format(*s))
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
def test_kernels_match_float64(dtype, D, shape, causal):
    if causal and shape[3] > shape[4]:
        pytest.skip("causal with Lq > Lk is split off by contract.conforming before the kernel")
    check(kernel_errors(shape, D, dtype, causal), dtype, f"{dtype} D={D} {shape}")


@pytest.mark.parametrize("D", [32, 80, 96])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "nomask"])
def test_other_head_dims(D, causal):
    for shape in [(1, 4, 2, 65, 65), (2, 8, 4, 127, 300)]:
        check(kernel_errors(shape, D, mx.bfloat16, causal), mx.bfloat16, f"D={D} {shape}")


@pytest.mark.parametrize("config", [(4, 1), (4, 2), (8, 1), (8, 2)], ids=str)
@pytest.mark.parametrize("D", [64, 128])
def test_forward_launch_shapes(config, D):
    """Every (warps, row tiles) launch of the mma.sync forward (the one off Hopper)."""
    check_forward(D, kernel="sm80", config=config)


SM90_LAUNCHES = [(D, config) for D in (64, 128) for config in cuda_kernels.sm90_launches(D)]


@pytest.mark.skipif(not cuda_kernels.is_sm90(), reason="the wgmma forward needs sm_90")
@pytest.mark.parametrize("D, config", SM90_LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
def test_sm90_forward_launches(dtype, D, config):
    """The wgmma forward with each (keys per tile, warpgroups, stages), not only the default."""
    check_forward(D, kernel="sm90", config=config, dtype=dtype)


@pytest.mark.skipif(not cuda_kernels.is_sm90(), reason="the wgmma forward needs sm_90")
@pytest.mark.parametrize("ctas", [1, 3, 7, None], ids=lambda c: f"ctas{c}")
@pytest.mark.parametrize("D", [64, 128])
def test_sm90_forward_walks_several_tiles_per_cta(D, ctas):
    """Grids with fewer CTAs than tiles (the persistent forward): each CTA walks long and
    short tiles, one-block tiles included, with the next tile's Q and K/V copied under the
    current one; None is the default grid."""
    for config in cuda_kernels.sm90_launches(D):
        check_forward(D, kernel="sm90", config=config, ctas=ctas)


def test_resident_ctas_fill_the_gpu():
    """The persistent grid is the SM count times the CTAs that fit one SM."""
    sms = cuda_kernels.sm_count()
    assert sms is not None and sms > 0
    assert cuda_kernels.resident_sm90_ctas(128, 128, 2, 3) == sms
    assert cuda_kernels.resident_sm90_ctas(64, 128, 1, 3) == 2 * sms


def test_any_scale_sign():
    """Zero and negative scales (the softmax then favours the smallest scores) match float64."""
    for scale in (-0.125, 0.0):
        errors = kernel_errors((1, 4, 2, 65, 65), 64, mx.bfloat16, True, seed=9, scale=scale)
        check(errors, mx.bfloat16, f"scale {scale}")


def test_hopper_runs_the_wgmma_kernels():
    expected = "sm90" if cuda_kernels.is_sm90() else "sm80"
    for choose in (cuda_kernels.forward_kernel, cuda_kernels.backward_kernel):
        assert [choose(D) for D in (64, 128)] == [expected] * 2
        assert [choose(D) for D in (32, 80, 96)] == ["sm80"] * 3


def check_forward(D, dtype=mx.bfloat16, **launch):
    """Output and log-sum-exp of one forward launch against float64, on awkward shapes."""
    for shape, causal in LAUNCH_CASES:
        q, k, v, cot = random_inputs(shape, D, dtype, 6)
        out, lse = cuda_kernels.forward(q, k, v, D**-0.5, causal, **launch)
        want = reference(q, k, v, cot, D**-0.5, causal)[0]
        assert ref.relative_error(out, want) < TOLERANCE[dtype], (shape, causal)
        # lse of the same rows, in the kernels' log2 units
        want_lse = ref.log_sum_exp(q, k, D**-0.5, "causal" if causal else None) / np.log(2)
        assert np.allclose(np.array(lse), want_lse, atol=2e-3, rtol=0), (shape, causal)


@pytest.mark.parametrize("n_warps", [4, 8])
@pytest.mark.parametrize("grouped_min_ctas", [0, 10**9], ids=["grouped", "per-head"])
def test_backward_launch_shapes(n_warps, grouped_min_ctas, monkeypatch):
    """The mma.sync backward (the one off Hopper) with each warp count and GQA strategy."""
    monkeypatch.setattr(cuda_kernels, "GROUPED_MIN_CTAS", grouped_min_ctas)
    check_backward(64, kernel="sm80", n_warps=n_warps)


SM90_BWD_LAUNCHES = [(D, c) for D in (64, 128) for c in cuda_kernels.bwd_sm90_launches(D)]


@pytest.mark.skipif(not cuda_kernels.is_sm90(), reason="the wgmma backward needs sm_90")
@pytest.mark.parametrize("D, config", SM90_BWD_LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
def test_sm90_backward_launches(dtype, D, config):
    """The wgmma backward with each (warpgroups, query row tiles), not only the default."""
    check_backward(D, dtype, kernel="sm90", config=config)


def check_backward(D, dtype=mx.bfloat16, **launch):
    """dq, dk, dv of one backward launch against float64, on awkward shapes."""
    for shape, causal in LAUNCH_CASES:
        q, k, v, cot = random_inputs(shape, D, dtype, 8)
        out, lse = cuda_kernels.forward(q, k, v, D**-0.5, causal)
        grads = cuda_kernels.backward(q, k, v, out, lse, cot, D**-0.5, causal, **launch)
        for name, got, want in zip(("dq", "dk", "dv"), grads, reference(q, k, v, cot, D**-0.5, causal)[1:]):
            assert got.dtype == dtype, name
            error = ref.relative_error(got, want)
            assert error < TOLERANCE[dtype], (name, shape, causal, error)


def test_forward_writes_every_output():
    q, k, v, _ = random_inputs((2, 8, 2, 300, 301), 64, mx.bfloat16, 1)
    out, lse = cuda_kernels.forward(q, k, v, 0.125, True, poison=float("nan"))
    assert not mx.any(mx.isnan(out)).item() and not mx.any(mx.isnan(lse)).item()


def test_results_repeat_exactly():
    """The forward repeats bit for bit. Reductions reorder float32 sums (dQ in both backward
    kernels; dK and dV too in the wgmma one, which sums the GQA group with them), so
    gradients may differ in the last bits, and no more."""
    first = kernel_errors((1, 8, 2, 513, 513), 64, mx.bfloat16, True, seed=3)
    second = kernel_errors((1, 8, 2, 513, 513), 64, mx.bfloat16, True, seed=3)
    assert first["out"] == second["out"]
    exact = ("dk", "dv") if cuda_kernels.backward_kernel(64) == "sm80" else ()
    for name in ("dq", "dk", "dv"):
        if name in exact:
            assert first[name] == second[name], name
        else:
            assert abs(first[name] - second[name]) < 1e-4, name


@pytest.mark.parametrize("mask", ["causal", None])
def test_poc_routes_to_the_kernels_and_trains(mask):
    poc = get("poc")
    q, k, v, cot = random_inputs((2, 8, 2, 1000, 1000), 64, mx.bfloat16, 2)

    def loss(fn, q, k, v):
        return (fn(q, k, v, scale=0.125, mask=mask) * cot).astype(mx.float32).sum()

    grads = mx.grad(lambda *a: loss(poc, *a), argnums=(0, 1, 2))(q, k, v)
    mx.eval(grads)
    assert poc.last_path == "cuda"
    want = reference(q, k, v, cot, 0.125, mask == "causal")[1:]
    for got, expected in zip(grads, want):
        assert ref.relative_error(got, expected) < TOLERANCE[mx.bfloat16]


def test_poc_routes_masks_and_float32_to_practical():
    poc = get("poc")
    q, k, v, _ = random_inputs((1, 4, 2, 65, 65), 64, mx.float32, 4)
    poc(q, k, v, scale=0.125, mask="causal")
    assert poc.last_path == "practical"
    mask = mx.random.uniform(shape=(65, 65), key=mx.random.key(5)) > 0.5
    poc(q.astype(mx.bfloat16), k.astype(mx.bfloat16), v.astype(mx.bfloat16), scale=0.125, mask=mask)
    assert poc.last_path == "practical"


def packed_rows(L: int = 1000) -> mx.array:  # L >= 950
    """int32 (3, L) document ids for the kernels' segments path: documents of length 1 and
    documents across the 64-key tiles and 64/128-row blocks, trailing padding, ids out of
    order (a tile's id range then spans a document it does not hold), a row of padding only."""
    rows = [
        [0] + [1] * 300 + [2] * 64 + [3] + [4] * 500 + [-1] * (L - 866),
        [3] * 200 + [1] * 300 + [2] * 450 + [-1] * (L - 950),
        [-1] * L,
    ]
    return mx.array(rows, dtype=mx.int32)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "nomask"])
@pytest.mark.parametrize("D", [64, 128, 80])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
def test_packed_kernels_match_float64(dtype, D, causal):
    ids = packed_rows()
    q, k, v, cot = random_inputs((3, 8, 2, ids.shape[1], ids.shape[1]), D, dtype, 7)
    scale = D**-0.5
    flash = poc_module.kernel_function("cuda", scale, causal, segments=True)
    (out,), grads = mx.vjp(lambda *a: flash(*a, ids)[0], [q, k, v], [cot])
    mx.eval(out, grads)
    want = ref.attention(q, k, v, scale, "causal" if causal else None, cot, segments=ids)
    named = dict(zip(("out", "dq", "dk", "dv"), (out, *grads)))
    errors = {name: ref.relative_error(got, expected) for (name, got), expected in zip(named.items(), want)}
    check(errors, dtype, f"packed {dtype} D={D} causal={causal}")
    assert_padding_is_zero(ids, named)


def test_packed_forward_writes_every_output():
    ids = packed_rows()
    q, k, v, _ = random_inputs((3, 4, 4, 1000, 1000), 64, mx.bfloat16, 8)
    out, lse = cuda_kernels.forward(q, k, v, 0.125, True, poison=float("nan"), segments=ids)
    assert not mx.any(mx.isnan(out)).item() and not mx.any(mx.isnan(lse)).item()


def test_poc_runs_packed_rows_on_the_kernels():
    ids = packed_rows()
    q, k, v, _ = random_inputs((3, 8, 2, ids.shape[1], ids.shape[1]), 64, mx.bfloat16, 9)
    mx.eval(get("poc")(q, k, v, scale=0.125, mask="causal", segments=ids))
    assert get("poc").last_path == "cuda"
