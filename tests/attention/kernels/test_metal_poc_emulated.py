"""The whole ``poc`` path on emulated Metal kernels: routing, self-check, mx.custom_function and
mx.grad, against ``practical``. poc.py itself is untouched: the test reports the backend as
Metal and swaps ``poc.KERNELS["metal"]`` for the emulator-backed kernels."""

import mlx.core as mx
import numpy as np
import pytest

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention import get
from flashtune.attention import poc as poc_module
from flashtune.attention.kernels import metal_emulator as emulator
from tests.attention import reference
from tests.attention.kernels.metal_cases import TOLERANCE, VARIANTS, variant_id

poc = get("poc")
practical = get("practical")


@pytest.fixture
def emulated_metal(monkeypatch):
    """poc sees a Metal GPU whose kernels are the emulated ones; verdicts start empty."""
    monkeypatch.setattr(poc_module, "backend", lambda: "metal")
    monkeypatch.setitem(poc_module.KERNELS, "metal", emulator.kernels())
    monkeypatch.setattr(poc_module, "_verdicts", {})


@pytest.mark.parametrize("D, dtype, causal", VARIANTS, ids=[variant_id(*v) for v in VARIANTS])
def test_poc_self_check_passes_on_emulated_kernels(emulated_metal, D, dtype, causal):
    """poc's first-use check (output and gradients against float32 practical) accepts every
    variant: on a Mac whose Metal compiler takes the source, poc would use the kernels."""
    assert poc_module.self_check("metal", dtype, D, causal) is None


# (B, Hq, Hkv, Lq, Lk, D, mask): GQA, Lq != Lk both ways (causal Lq > Lk goes through
# contract.conforming's split), one query row.
CASES = [
    (1, 4, 2, 13, 9, 64, "causal"),
    (2, 3, 1, 65, 130, 32, "causal"),
    (1, 8, 1, 1, 67, 128, None),
    (1, 2, 2, 70, 33, 80, None),
]


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-H{}/{}-Lq{}-Lk{}-D{}-{}".format(*c))
def test_poc_trains_through_emulated_kernels_like_practical(emulated_metal, case, dtype):
    B, n_heads, n_kv_heads, L_q, L_k, D, mask = case
    rng = np.random.default_rng(L_q * L_k)
    q, k, v, cot = (
        mx.array(rng.normal(size=s).astype(np.float32)).astype(dtype)
        for s in [(B, n_heads, L_q, D), (B, n_kv_heads, L_k, D), (B, n_kv_heads, L_k, D), (B, n_heads, L_q, D)]
    )
    scale = D**-0.5

    def loss(fn, *args):
        out = fn(*args, scale=scale, mask=mask)
        return mx.sum(out.astype(mx.float32) * cot.astype(mx.float32))

    out = poc(q, k, v, scale=scale, mask=mask)
    assert poc.last_path == "metal"
    grads = mx.grad(lambda *a: loss(poc, *a), argnums=(0, 1, 2))(q, k, v)
    wide = [x.astype(mx.float32) for x in (q, k, v)]
    want_out = practical(*wide, scale=scale, mask=mask)
    want_grads = mx.grad(lambda *a: loss(practical, *a), argnums=(0, 1, 2))(*wide)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (want_out, *want_grads)):
        assert got.dtype == dtype and got.shape == want.shape, name
        want64 = np.array(want).astype(np.float64)
        error = reference.relative_error(got, want64)
        assert error <= TOLERANCE[dtype], f"{name}: {reference.describe_error(got, want64)}"
    assert poc_module._verdicts == {("metal", dtype, D, mask == "causal"): None}
