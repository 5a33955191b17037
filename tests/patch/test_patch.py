"""flashtune.patch on tiny mlx-lm Llama and Qwen2 models: logits, KV cache, unpatch, LoRA."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten, tree_map
from mlx_lm.generate import generate_step
from mlx_lm.models import base, llama, qwen2
from mlx_lm.models.cache import QuantizedKVCache, make_prompt_cache
from mlx_lm.tuner.utils import linear_to_lora_layers

import flashtune
from flashtune import attention
from flashtune.patch import SUPPORTED, patch, patch_info, patched, unpatch
from tests.tiny_models import model_module, tiny_model

NAMES = attention.names()
RTOL = 1e-4  # float32, patched vs unpatched, relative to the largest reference value

# The plain architectures, plus a Llama whose first layer is sliding-window: that one gets
# array masks (create_causal_mask with a window) and a RotatingKVCache from mlx-lm.
MODELS = {
    "llama": dict(model_type="llama"),
    "qwen2": dict(model_type="qwen2"),
    "llama-sliding": dict(model_type="llama", layer_types=["sliding_attention", "full_attention"], sliding_window=4),
}
LORA_CONFIG = {"rank": 4, "scale": 10.0, "dropout": 0.0}


class Counting:
    """An attention callable that counts its calls and defers to a registered one."""

    def __init__(self, name="baseline"):
        self.fn = attention.get(name)
        self.calls = 0

    def __call__(self, q, k, v, *, scale, mask=None):
        self.calls += 1
        return self.fn(q, k, v, scale=scale, mask=mask)


def make(model_key="llama", seed=0):
    return tiny_model(seed=seed, **MODELS[model_key])


def tokens(B=2, L=9, seed=1):
    return mx.random.randint(0, 128, (B, L), key=mx.random.key(seed))


def attention_blocks(model):
    return [layer.self_attn for layer in model.layers]


def assert_close(actual, expected, rtol=RTOL, what="logits"):
    err = mx.abs(actual - expected)
    scale = mx.abs(expected).max().item()
    max_err, mean_err = err.max().item(), err.mean().item()
    assert max_err <= rtol * scale, (
        f"{what}: max error {max_err:.3g}, mean {mean_err:.3g}, scale {scale:.3g}, rtol {rtol}"
    )


def cached_logits(model, toks, n_prompt=5):
    """Logits from feeding the prompt, then the remaining tokens one by one, through a cache."""
    cache = make_prompt_cache(model)
    out = [model(toks[:, :n_prompt], cache=cache)]
    for i in range(n_prompt, toks.shape[1]):
        out.append(model(toks[:, i : i + 1], cache=cache))
    return mx.concatenate(out, axis=1)


# Logits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_key", MODELS)
def test_logits_match_without_cache(model_key, name):
    model, toks = make(model_key), tokens()
    expected = model(toks)
    counting = Counting(name)
    with patched(model, counting):
        actual = model(toks)
    assert counting.calls == len(model.layers)
    assert_close(actual, expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_key", MODELS)
def test_logits_match_with_kv_cache(model_key, name):
    model, toks = make(model_key), tokens()
    expected = cached_logits(model, toks)
    counting = Counting(name)
    with patched(model, counting):
        actual = cached_logits(model, toks)
    assert counting.calls == len(model.layers) * (1 + toks.shape[1] - 5)
    assert_close(actual, expected)
    if model_key != "llama-sliding":  # a rotating cache forgets keys the full pass sees
        assert_close(actual, model(toks), what="cached vs full-sequence logits")


@pytest.mark.parametrize("name", NAMES)
def test_generation_works_patched(name):
    model = make("qwen2")
    prompt = tokens(B=1, L=6)[0]

    def greedy():
        return [t for t, _ in generate_step(prompt, model, max_tokens=6)]

    expected = greedy()
    counting = Counting(name)
    with patched(model, counting):
        assert greedy() == expected
    assert counting.calls > 0


def test_quantized_kv_cache_falls_back_to_mlx_lm():
    # MLX quantizes in groups of 32 or more, so this model has head_dim 32.
    model = tiny_model("llama", num_attention_heads=2, num_key_value_heads=1)
    toks = tokens(L=4)

    def run():
        cache = [QuantizedKVCache(group_size=32, bits=8) for _ in model.layers]
        return model(toks, cache=cache)

    expected = run()
    counting = Counting()
    with patched(model, counting):
        actual = run()
    assert counting.calls == 0
    assert mx.array_equal(actual, expected)


# Unpatch, replace, no global state -----------------------------------------------------------


@pytest.mark.parametrize("model_key", ["llama", "qwen2"])
def test_unpatch_restores_modules_and_bit_identical_logits(model_key):
    model, toks = make(model_key), tokens()
    expected = model(toks)
    blocks = attention_blocks(model)
    ids, classes = [id(b) for b in blocks], [type(b) for b in blocks]
    params = tree_flatten(model.parameters())

    assert patch(model, "practical") is model
    assert all(type(b) is not c and isinstance(b, c) for b, c in zip(blocks, classes, strict=True))
    assert [k for k, _ in tree_flatten(model.parameters())] == [k for k, _ in params]
    assert patch_info(model) == {
        "attn": "practical",
        "blocks": ["model.layers.0.self_attn", "model.layers.1.self_attn"],
        "model_type": model_key,
    }

    assert unpatch(model) is model
    blocks_after = attention_blocks(model)
    assert [id(b) for b in blocks_after] == ids
    assert all(type(b) is c for b, c in zip(blocks_after, classes, strict=True))
    assert all("_flashtune_attn" not in b.__dict__ for b in blocks_after)
    params_after = tree_flatten(model.parameters())
    assert all(a is b for (_, a), (_, b) in zip(params_after, params, strict=True))
    assert patch_info(model) is None
    assert mx.array_equal(model(toks), expected)
    assert unpatch(model) is model  # unpatching an unpatched model changes nothing


def test_patching_twice_replaces():
    model, toks = make(), tokens()
    first, second = Counting(), Counting("practical")
    patch(model, first)
    patch(model, second)
    model(toks)
    assert (first.calls, second.calls) == (0, len(model.layers))
    mro = type(model.layers[0].self_attn).__mro__
    assert sum(c.__name__ == "PatchedAttention" for c in mro) == 1
    unpatch(model)
    assert type(model.layers[0].self_attn) is llama.Attention


def test_patched_restores_the_previous_patch_even_on_error():
    model, toks = make(), tokens()
    outer, inner = Counting(), Counting()
    patch(model, outer)
    with pytest.raises(RuntimeError), patched(model, inner):
        model(toks)
        raise RuntimeError("inside")
    assert (outer.calls, inner.calls) == (0, len(model.layers))
    model(toks)
    assert outer.calls == len(model.layers)
    unpatch(model)


def test_no_global_state_changes():
    call_before = {m: m.Attention.__dict__["__call__"] for m in (llama, qwen2)}
    init_before = {m: m.Model.__dict__["__init__"] for m in (llama, qwen2)}
    model, other, toks = make(), make(), tokens()
    counting = Counting()
    patch(model, counting)
    other(toks)
    assert counting.calls == 0 and type(other.layers[0].self_attn) is llama.Attention
    assert type(make().layers[0].self_attn) is llama.Attention  # new instances: unpatched
    for m in (llama, qwen2):
        assert m.Attention.__dict__["__call__"] is call_before[m]
        assert m.Model.__dict__["__init__"] is init_before[m]
        assert m.scaled_dot_product_attention is base.scaled_dot_product_attention
    unpatch(model)


def test_package_exports():
    assert flashtune.patch is patch and flashtune.unpatch is unpatch
    assert flashtune.patched is patched
    assert set(SUPPORTED) == {"llama", "qwen2"}


# Errors --------------------------------------------------------------------------------------


def test_unknown_name_lists_the_registry():
    with pytest.raises(KeyError, match=", ".join(NAMES)):
        patch(make(), "flash9")


@pytest.mark.parametrize("bad", [42, lambda q, k: q])
def test_bad_callable_is_a_type_error(bad):
    with pytest.raises(TypeError, match="scale"):
        patch(make(), bad)


def test_unsupported_model_type_names_it_and_the_supported_ones():
    arch = model_module("qwen3")
    model = arch.Model(
        arch.ModelArgs(
            model_type="qwen3",
            hidden_size=32,
            num_hidden_layers=1,
            intermediate_size=64,
            num_attention_heads=2,
            rms_norm_eps=1e-5,
            vocab_size=64,
            num_key_value_heads=1,
            max_position_embeddings=64,
            head_dim=16,
            tie_word_embeddings=True,
            rope_theta=1e6,
        )
    )
    with pytest.raises(ValueError, match=r"'qwen3'.*llama, qwen2"):
        patch(model, "baseline")
    with pytest.raises(ValueError, match="Linear"):
        patch(nn.Linear(4, 4), "baseline")
    with pytest.raises(TypeError, match="nn.Module"):
        patch("llama", "baseline")


# LoRA and training -------------------------------------------------------------------------


def lora_model(model_key="llama"):
    model = make(model_key)
    model.freeze()
    mx.random.seed(3)
    linear_to_lora_layers(model, len(model.layers), LORA_CONFIG)
    # lora_b starts at zero, which would make every lora_a gradient zero: randomize it.
    model.update(tree_map(lambda p: 0.02 * mx.random.normal(p.shape), model.trainable_parameters()))
    mx.eval(model.parameters())
    return model


def lm_loss(model, toks):
    logits = model(toks[:, :-1])
    return nn.losses.cross_entropy(logits, toks[:, 1:]).mean()


def test_lora_before_or_after_patch_keeps_mlx_lm_names():
    expected = [k for k, _ in tree_flatten(lora_model().trainable_parameters())]
    assert "model.layers.0.self_attn.q_proj.lora_a" in expected

    before = lora_model()
    patch(before, "practical")
    after = patch(make(), "practical")
    after.freeze()
    linear_to_lora_layers(after, len(after.layers), LORA_CONFIG)
    for model in (before, after):
        assert [k for k, _ in tree_flatten(model.trainable_parameters())] == expected
        assert patch_info(model)["attn"] == "practical"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_key", ["llama", "qwen2"])
def test_lora_gradients_match(model_key, name):
    model, toks = lora_model(model_key), tokens(L=12)
    loss_and_grad = nn.value_and_grad(model, lm_loss)
    expected_loss, expected = loss_and_grad(model, toks)
    with patched(model, name):
        loss, grads = loss_and_grad(model, toks)
    assert_close(loss, expected_loss, what="loss")
    expected, grads = dict(tree_flatten(expected)), dict(tree_flatten(grads))
    assert list(grads) == list(expected)
    for key in expected:
        assert_close(grads[key], expected[key], what=f"gradient of {key}")


def compiled_training(model, toks, steps=3):
    """mlx-lm's trainer pattern: one mx.compile'd step over the model and optimizer state."""
    optimizer = optim.Adam(learning_rate=1e-2)
    loss_and_grad = nn.value_and_grad(model, lm_loss)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch):
        loss, grads = loss_and_grad(model, batch)
        optimizer.update(model, grads)
        return loss

    losses = []
    for _ in range(steps):
        loss = step(toks)
        mx.eval(state, loss)
        losses.append(loss)
    return mx.stack(losses), dict(tree_flatten(model.trainable_parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_compiled_lora_training_matches(name):
    toks = tokens(L=12)
    expected_losses, expected = compiled_training(lora_model("qwen2"), toks)
    model = patch(lora_model("qwen2"), name)
    losses, params = compiled_training(model, toks)
    assert_close(losses, expected_losses, what="losses")
    for key in expected:
        assert_close(params[key], expected[key], rtol=1e-3, what=f"trained {key}")
