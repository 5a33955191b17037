"""DoRA layers: flashtune's mixed-precision DoRA against mlx-lm's DoRALinear and a float64 reference."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.tuner.dora import DoRALinear

from flashtune.train.dora import MixedPrecisionDoRALinear
from flashtune.train.lora import set_lora_precision

IN, OUT, RANK, SCALE = 96, 80, 8, 20.0


def dora_layer(seed: int, bias: bool = False, quantized: bool = False, dtype=mx.float32) -> DoRALinear:
    """mlx-lm's DoRALinear with a trained-looking B and magnitude (mlx-lm starts B at zero, m at ||W||)."""
    mx.random.seed(seed)
    linear = nn.Linear(IN, OUT, bias=bias)
    linear.set_dtype(dtype)
    if quantized:
        linear = nn.QuantizedLinear.from_linear(linear, group_size=32, bits=4)
    layer = DoRALinear.from_base(linear, r=RANK, scale=SCALE)
    layer.lora_b = mx.random.normal((RANK, OUT)) * 0.05
    layer.m = layer.m * (1 + 0.1 * mx.random.normal((OUT,)))
    mx.eval(layer.parameters())
    return layer


def wrap(layer: nn.Module) -> nn.Module:
    model = nn.Module()
    model.layers = [layer]
    return model


def assert_close(got, expected, rtol, atol_fraction, name):
    """Element-wise closeness, error relative to the tensor's largest entry; prints max and mean error."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    error = np.abs(got - expected)
    limit = rtol * np.abs(expected) + atol_fraction * np.abs(expected).max()
    assert (error <= limit).all(), (
        f"{name}: max error {error.max():.3g}, mean {error.mean():.3g} (largest entry {np.abs(expected).max():.3g})"
    )


def output_and_grads(layer: nn.Module, x: mx.array):
    """The layer's output and the gradients of a fixed scalar of it in lora_a, lora_b, m and x."""
    model = wrap(layer)
    model.freeze()
    layer.unfreeze(keys=["lora_a", "lora_b", "m"], recurse=False)
    weights = mx.arange(OUT, dtype=mx.float32) / OUT

    def loss(model, x):
        return ((model.layers[0](x).astype(mx.float32) ** 2) * weights).sum()

    _, grads = nn.value_and_grad(model, loss)(model, x)
    x_grad = mx.grad(lambda x: loss(model, x))(x)
    return layer(x), {**dict(tree_flatten(grads["layers"][0])), "x": x_grad}


@pytest.mark.parametrize(
    "bias, quantized", [(False, False), (True, False), (False, True)], ids=["plain", "bias", "qlora"]
)
def test_mixed_dora_equals_mlx_lm_dora_in_float32(bias, quantized):
    x = mx.random.normal((2, 7, IN), key=mx.random.key(1))
    expected_out, expected = output_and_grads(dora_layer(3, bias, quantized), x)
    layer = dora_layer(3, bias, quantized)
    assert set_lora_precision(wrap(layer), "mixed") == 1 and isinstance(layer, MixedPrecisionDoRALinear)
    out, grads = output_and_grads(layer, x)
    assert_close(out, expected_out, 1e-5, 1e-6, "output")
    assert set(grads) == {"lora_a", "lora_b", "m", "x"}
    for name in grads:
        assert grads[name].dtype == mx.float32
        assert_close(grads[name], expected[name], 1e-4, 1e-5, name)


def reference(layer: DoRALinear, x: mx.array) -> np.ndarray:
    """DoRA in float64: m / ||W + s B^T A^T||_row * (x W^T + s x A B) + bias."""
    f64 = lambda a: np.array(a.astype(mx.float32), dtype=np.float64)  # noqa: E731
    w, a, b, x64 = f64(layer.linear.weight), f64(layer.lora_a), f64(layer.lora_b), f64(x)
    norms = np.linalg.norm(w + SCALE * b.T @ a.T, axis=1)
    out = f64(layer.m) / norms * (x64 @ w.T + SCALE * (x64 @ a) @ b)
    return out + f64(layer.linear.bias) if "bias" in layer.linear else out


@pytest.mark.parametrize("precision", ["mixed", "float32"])
def test_dora_matches_float64_reference_in_bf16(precision):
    layer = dora_layer(4, bias=True, dtype=mx.bfloat16)
    set_lora_precision(wrap(layer), precision)
    x = mx.random.normal((3, 17, IN), key=mx.random.key(2)).astype(mx.bfloat16)
    out = layer(x)
    assert out.dtype == mx.bfloat16
    expected = reference(layer, x)
    got = np.array(out.astype(mx.float32))
    assert np.isfinite(got).all()
    # bf16 output: 8 bits of mantissa; the base product is rounded before the add in both paths.
    assert_close(got, expected, 2e-2, 2e-2, f"{precision} output")


def test_precision_keeps_dora_parameters_and_switches_back():
    layer = dora_layer(5)
    described = lambda: {k: (v.dtype, v.shape) for k, v in tree_flatten(layer.parameters())}  # noqa: E731
    before = described()
    model = wrap(layer)
    set_lora_precision(model, "mixed")
    assert described() == before
    assert set(before) == {"linear.weight", "lora_a", "lora_b", "m"}  # the weight's row norms are no parameter
    set_lora_precision(model, "float32")
    assert type(layer) is DoRALinear
