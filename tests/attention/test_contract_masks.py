"""Every mask form that mx.fast.scaled_dot_product_attention accepts works in every implementation;
the forms it refuses raise the contract's ValueError."""

import mlx.core as mx
import numpy as np
import pytest

import flashtune  # noqa: F401
from flashtune import attention
from tests.attention import reference
from tests.attention.test_contract import TOLERANCE, check

B, N_HEADS, N_KV_HEADS, L_Q, L_K, D = 2, 4, 2, 5, 6, 8

# Shapes of rank 0 to 4 that broadcast to (B, Hq, Lq, Lk) = (2, 4, 5, 6), a 1 in every place
# that may hold one.
SHAPES = [
    (),
    (1,),
    (6,),
    (5, 1),
    (5, 6),
    (1, 6),
    (4, 5, 6),
    (1, 1, 6),
    (2, 1, 5, 6),
    (1, 4, 1, 6),
    (2, 4, 5, 1),
    (2, 4, 5, 6),
]
# bool, and additive masks of every dtype MLX adds (floats no wider than float32, integers).
DTYPES = ["bool", "float32", "float16", "bfloat16", "int32", "int8", "uint8"]


def make_mask(shape, dtype: str, rng) -> mx.array:
    """A random mask; bool keeps ~70 % of keys, additive ones hold small values and -inf."""
    keep = rng.random(shape) < 0.7
    if dtype == "bool":
        return mx.array(keep)
    if dtype.startswith(("int", "uint")):
        return mx.array(rng.integers(0, 3, size=shape)).astype(getattr(mx, dtype))
    bias = np.where(keep, rng.normal(size=shape), -np.inf).astype(np.float32)
    return mx.array(bias).astype(getattr(mx, dtype))


def inputs(rng, dtype=mx.float32):
    q = mx.array(rng.normal(size=(B, N_HEADS, L_Q, D)).astype(np.float32)).astype(dtype)
    k, v = (mx.array(rng.normal(size=(B, N_KV_HEADS, L_K, D)).astype(np.float32)).astype(dtype) for _ in range(2))
    return q, k, v


def test_mlx_accepts_these_forms():
    """The forms below are the ones MLX itself takes, so the list is not wider than MLX's."""
    rng = np.random.default_rng(0)
    q, k, v = inputs(rng)
    for shape in SHAPES:
        for dtype in DTYPES:
            mx.eval(mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=make_mask(shape, dtype, rng)))
    for bad in REFUSED.values():
        with pytest.raises(ValueError):
            mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", attention.names())
def test_every_mlx_mask_form_matches_float64(name, dtype):
    rng = np.random.default_rng(len(dtype))
    q, k, v = inputs(rng)
    d_out = mx.array(rng.normal(size=q.shape).astype(np.float32))
    fn = attention.get(name)
    for shape in SHAPES:
        mask = make_mask(shape, dtype, rng)
        expected = reference.attention(q, k, v, 0.3, mask, d_out)

        def loss(q, k, v, mask=mask):
            return mx.sum(fn(q, k, v, scale=0.3, mask=mask) * d_out)

        got = (fn(q, k, v, scale=0.3, mask=mask), *mx.grad(loss, argnums=(0, 1, 2))(q, k, v))
        for what, g, want in zip(("out", "dq", "dk", "dv"), got, expected):
            check(f"{what} with a {dtype} mask of shape {shape}", g, want, TOLERANCE["float32"][0])


@pytest.mark.parametrize("shape", [(), (7, 1), (2, 4, 7, 1), (1, 7)], ids=str)
def test_demo_cuda_padding_path_takes_broadcast_masks(shape, monkeypatch):
    """demo pads to 128 on CUDA: a mask broadcast over the keys still hides the padded keys."""
    from flashtune.attention import demo as module

    monkeypatch.setattr(module.env, "backend", lambda: "cuda")
    rng = np.random.default_rng(3)
    q, k, v = (mx.array(rng.normal(size=(B, h, 7, 16)).astype(np.float16)) for h in (4, 2, 2))
    for dtype in ("bool", "float16"):
        mask = make_mask(shape, dtype, rng)
        want = reference.attention(q, k, v, 0.25, mask)
        check(f"out, {dtype} mask", module.demo(q, k, v, scale=0.25, mask=mask), want, TOLERANCE["float16"][0])


REFUSED = {
    "rank 5": mx.ones((1, 2, 4, 5, 6), dtype=mx.bool_),
    "heads": mx.ones((2, 2, 5, 6), dtype=mx.bool_),
    "batch first in rank 3": mx.ones((2, 5, 6), dtype=mx.bool_),
    "float64": mx.zeros((5, 6), dtype=mx.float64),
    "complex64": mx.zeros((5, 6), dtype=mx.complex64),
}


@pytest.mark.parametrize("what", REFUSED)
@pytest.mark.parametrize("name", attention.names())
def test_masks_mlx_refuses_raise_value_error(name, what):
    q, k, v = inputs(np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"mask (of shape|dtype)") as info:
        attention.get(name)(q, k, v, scale=0.3, mask=REFUSED[what])
    assert str(tuple(REFUSED[what].shape)) in str(info.value) or "dtype" in str(info.value)
