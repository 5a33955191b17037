"""LoRA compute precision: the mixed branch matches a float64 reference and keeps parameters as mlx-lm has them."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.tuner.lora import LoRALinear

from flashtune.train.lora import LORA_PRECISIONS, MixedPrecisionLoRALinear, set_lora_precision

IN, OUT, RANK, SCALE = 96, 80, 8, 20.0


def lora_layer(seed: int) -> LoRALinear:
    mx.random.seed(seed)
    layer = LoRALinear(IN, OUT, r=RANK, scale=SCALE)
    layer.lora_b = mx.random.normal((RANK, OUT)) * 0.05  # mlx-lm starts it at zero: no signal
    layer.linear.weight = layer.linear.weight.astype(mx.bfloat16)
    return layer


def reference(layer: LoRALinear, x: mx.array) -> np.ndarray:
    f64 = lambda a: np.array(a.astype(mx.float32), dtype=np.float64)  # noqa: E731
    x64 = f64(x)
    return x64 @ f64(layer.linear.weight).T + SCALE * (x64 @ f64(layer.lora_a)) @ f64(layer.lora_b)


def wrap(layer: LoRALinear) -> nn.Module:
    model = nn.Module()
    model.layers = [layer]
    return model


@pytest.mark.parametrize("precision", LORA_PRECISIONS)
def test_lora_branch_matches_float64_reference_in_bf16(precision):
    layer = lora_layer(1)
    set_lora_precision(wrap(layer), precision)
    x = mx.random.normal((3, 17, IN)).astype(mx.bfloat16)
    out = layer(x)
    assert out.dtype == mx.bfloat16
    expected = reference(layer, x)
    got = np.array(out.astype(mx.float32), dtype=np.float64)
    assert np.isfinite(got).all()
    # bf16 output: 8 bits of mantissa, and y is rounded before the add in both paths.
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


def test_mixed_gradients_match_float32_path():
    x = mx.random.normal((2, 33, IN)).astype(mx.bfloat16)
    grads = {}
    for precision in LORA_PRECISIONS:
        layer = lora_layer(2)
        model = wrap(layer)
        set_lora_precision(model, precision)
        model.freeze()
        layer.unfreeze(keys=["lora_a", "lora_b"], recurse=False)
        loss = lambda m: (m.layers[0](x).astype(mx.float32) ** 2).mean()  # noqa: E731
        _, g = nn.value_and_grad(model, loss)(model)
        grads[precision] = g["layers"][0]
    for name in ("lora_a", "lora_b"):
        mixed, full = grads["mixed"][name], grads["float32"][name]
        assert mixed.dtype == mx.float32  # gradients land in the float32 parameters' dtype
        scale = float(mx.abs(full).max())
        assert scale > 0
        assert float(mx.abs(mixed - full).max()) <= 3e-2 * scale, name


def test_mixed_equals_mlx_lm_in_float32():
    layer = lora_layer(3)
    layer.linear.weight = layer.linear.weight.astype(mx.float32)
    x = mx.random.normal((2, 5, IN))
    expected = layer(x)
    set_lora_precision(wrap(layer), "mixed")
    assert isinstance(layer, MixedPrecisionLoRALinear)
    np.testing.assert_allclose(np.array(layer(x)), np.array(expected), rtol=1e-5, atol=1e-5)


def test_precision_keeps_parameters_and_switches_back():
    layer = lora_layer(4)
    before = {k: (v.dtype, v.shape) for k, v in layer.parameters().items() if k.startswith("lora")}
    model = wrap(layer)
    assert set_lora_precision(model, "mixed") == 1
    assert {k: (v.dtype, v.shape) for k, v in layer.parameters().items() if k.startswith("lora")} == before
    assert before["lora_a"][0] == mx.float32
    set_lora_precision(model, "float32")
    assert type(layer) is LoRALinear


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="float16.*mixed, float32"):
        set_lora_precision(wrap(lora_layer(5)), "float16")
