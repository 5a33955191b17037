"""poc with packed rows (``segments``) on the emulated Metal kernels: the segments self-check
accepts them, and poc trains through them like ``practical``."""

import mlx.core as mx
import numpy as np
import pytest

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention import get
from flashtune.attention import poc as poc_module
from flashtune.attention.kernels import metal
from tests.attention.kernels.metal_cases import TOLERANCE, variant_id
from tests.attention.kernels.test_metal_poc_emulated import emulated_metal  # noqa: F401
from tests.attention.test_contract import check

poc = get("poc")
practical = get("practical")
# Every head dim once, the dtypes and causal/not alternating (the emulator takes ~1 s a check).
VARIANTS = [(D, metal.DTYPES[i % 2], i % 2 == 0) for i, D in enumerate(metal.HEAD_DIMS)]


@pytest.mark.parametrize("D, dtype, causal", VARIANTS, ids=[variant_id(*v) for v in VARIANTS])
def test_segments_self_check_passes_on_emulated_kernels(emulated_metal, D, dtype, causal):  # noqa: F811
    assert poc_module.self_check("metal", dtype, D, causal, segments=True) is None


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mask", ["causal", None])
def test_poc_trains_packed_rows_through_emulated_kernels(emulated_metal, mask, dtype):  # noqa: F811
    """Two rows of 70 slots: documents of 30, 1 and 33 then padding; one document then a
    padding id other than -1."""
    rng = np.random.default_rng(70)
    q, k, v, cot = (mx.array(rng.normal(size=(2, h, 70, 64)).astype(np.float32)).astype(dtype) for h in (6, 2, 2, 6))
    ids = mx.array([[0] * 30 + [1] + [2] * 33 + [-1] * 6, [4] * 50 + [-2] * 20], dtype=mx.int32)

    def loss(fn, *args):
        out = fn(*args, scale=0.125, mask=mask, segments=ids)
        return mx.sum(out.astype(mx.float32) * cot.astype(mx.float32))

    out = poc(q, k, v, scale=0.125, mask=mask, segments=ids)
    assert poc.last_path == "metal"
    grads = mx.grad(lambda *a: loss(poc, *a), argnums=(0, 1, 2))(q, k, v)
    wide = [x.astype(mx.float32) for x in (q, k, v)]
    want_out = practical(*wide, scale=0.125, mask=mask, segments=ids)
    want_grads = mx.grad(lambda *a: loss(practical, *a), argnums=(0, 1, 2))(*wide)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (want_out, *want_grads)):
        assert got.dtype == dtype and got.shape == want.shape, name
        check(name, got, np.array(want).astype(np.float64), TOLERANCE[dtype])
    assert poc_module._verdicts == {("metal", dtype, 64, mask == "causal", "segments"): None}
