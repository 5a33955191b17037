"""Fused q/k/v and gate/up projections (LoRA and DoRA): the same loss, gradients and parameters as separate ones."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import flashtune  # noqa: F401
from flashtune.patch import patch
from flashtune.train.fused_projections import FusedProjections, fuse_projections, unfuse_projections
from flashtune.train.lora import adapter_config, apply_lora, enable_grad_checkpoint
from flashtune.train.step import loss_sum
from tests.tiny_models import tiny_model


def lora_model(model_type, dropout=0.0, precision="mixed", fine_tune_type="lora", **overrides):
    model = tiny_model(model_type, **overrides)
    apply_lora(model, adapter_config(2, 4, 20.0, dropout, fine_tune_type), precision)
    for _, module in model.named_modules():  # LoRA B starts at zero, DoRA's m at ||W||: make them count
        if "lora_b" in module:
            module.lora_b = 0.05 * mx.random.normal(module.lora_b.shape)
        if "m" in module:
            module.m = module.m * (1 + 0.1 * mx.random.normal(module.m.shape))
    patch(model, "baseline")
    mx.eval(model.parameters())
    return model


def batch():
    tokens = mx.random.randint(0, 128, (2, 17), key=mx.random.key(1))
    return tokens[:, :-1], tokens[:, 1:], mx.ones((2, 16))


def assert_close(got, expected, name):
    """float32 sums in another order: error relative to the tensor's largest entry."""
    got, expected = np.array(got), np.array(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5 * np.abs(expected).max(), err_msg=name)


def loss_and_grads(model):
    (loss, _), grads = nn.value_and_grad(model, loss_sum)(model, *batch())
    return loss.item(), dict(tree_flatten(grads))


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])  # qwen2: q/k/v with biases
def test_fused_step_has_the_same_loss_gradients_and_parameter_names(model_type, fine_tune_type):
    model = lora_model(model_type, fine_tune_type=fine_tune_type)
    params = dict(tree_flatten(model.parameters()))
    loss, grads = loss_and_grads(model)
    assert fuse_projections(model) == 4  # 2 LoRA'd blocks x (q/k/v, gate/up)
    fused_loss, fused_grads = loss_and_grads(model)
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    assert set(fused_grads) == set(grads)  # mlx-lm's names: adapters and optimizer state unchanged
    for name in grads:
        assert_close(fused_grads[name], grads[name], name)
    after = dict(tree_flatten(model.parameters()))
    assert set(after) == set(params)
    for name in params:  # base weights became views of the concatenation: same values
        assert mx.array_equal(after[name], params[name]).item(), name


def test_each_projection_gets_its_own_lora_gradient():
    model = lora_model("llama")
    fuse_projections(model)
    fused = model.layers[-1].self_attn.__dict__["_flashtune_fused_qkv"]
    assert isinstance(fused, FusedProjections)
    x = mx.random.normal((2, 5, 64))

    def branch(lora_bs):
        for member, b in zip(fused.members, lora_bs):
            member.lora_b = b
        return sum((y * mx.arange(y.shape[-1])).sum() for y in fused(x))

    grads = mx.grad(branch)([m.lora_b for m in fused.members])
    for member, g in zip(fused.members, grads):
        assert g.shape == member.lora_b.shape and mx.abs(g).max().item() > 0


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_unfusing_restores_the_exact_forward(model_type, fine_tune_type):
    model = lora_model(model_type, fine_tune_type=fine_tune_type)
    inputs = batch()[0]
    before = model(inputs)
    mlp_class = type(model.layers[-1].mlp)
    fuse_projections(model)
    assert type(model.layers[-1].mlp) is not mlp_class
    unfuse_projections(model)
    assert type(model.layers[-1].mlp) is mlp_class
    assert "_flashtune_fused_qkv" not in model.layers[-1].self_attn.__dict__
    assert mx.array_equal(model(inputs), before).item()


@pytest.mark.parametrize("case", ["dropout", "float32 LoRA", "float32 DoRA", "no LoRA"])
def test_only_the_same_computation_is_fused(case):
    if case == "dropout":  # mlx-lm draws dropout per projection; one fused input cannot
        model = lora_model("llama", dropout=0.1)
    elif case.startswith("float32"):
        model = lora_model("llama", precision="float32", fine_tune_type=case.split()[1].lower())
    else:
        model = tiny_model("llama")
    assert fuse_projections(model) == 0


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
def test_fused_projections_with_gradient_checkpointing(fine_tune_type):
    """Checkpointed blocks re-run their forward from updated parameters: the fused projections
    read the members' LoRA parameters at call time, so gradients stay the same."""
    model = lora_model("llama", fine_tune_type=fine_tune_type)
    loss, grads = loss_and_grads(model)
    fuse_projections(model)
    enable_grad_checkpoint(model)
    fused_loss, fused_grads = loss_and_grads(model)
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    for name in grads:
        assert_close(fused_grads[name], grads[name], name)


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
def test_compiled_fused_step_matches_uncompiled(fine_tune_type):
    model = lora_model("qwen2", fine_tune_type=fine_tune_type)
    fuse_projections(model)
    loss, grads = loss_and_grads(model)
    state = [model.state]
    compiled = mx.compile(lambda *b: nn.value_and_grad(model, loss_sum)(model, *b), inputs=state, outputs=state)
    (c_loss, _), c_grads = compiled(*batch())
    assert c_loss.item() == pytest.approx(loss, rel=1e-6)
    for name, g in tree_flatten(c_grads):
        assert_close(g, grads[name], name)
