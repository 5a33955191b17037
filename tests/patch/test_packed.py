"""flashtune.packed: packed rows through patched tiny Llama and Qwen2 equal the documents run one
by one (logits and LoRA gradients), which is also the proof that RoPE needs no change."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models.cache import make_prompt_cache

import flashtune
from flashtune import attention
from flashtune.patch import packed, patch, patched, unpatch
from flashtune.train.lora import apply_lora, enable_grad_checkpoint
from tests.tiny_models import tiny_model

NAMES = attention.names()
RTOL = 1e-5  # float32, relative to the largest value of the unpacked result
DOCUMENTS = (5, 1, 9, 7)  # token counts; the packed row ends in PADDING slots of id -1
PADDING = 3
LORA = {"num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}}


def lora_model(model_type: str, attn: str, checkpointed: bool = False) -> nn.Module:
    """A tiny float32 model with LoRA as the trainer applies it (random lora_b, so that every
    LoRA gradient is non-zero), patched with ``attn``, its blocks checkpointed if asked."""
    model = tiny_model(model_type)
    apply_lora(model, LORA)
    if checkpointed:
        enable_grad_checkpoint(model)
    mx.random.seed(3)
    model.update(tree_map(lambda p: 0.02 * mx.random.normal(p.shape), model.trainable_parameters()))
    mx.eval(model.parameters())
    return patch(model, attn)


def documents(seed: int = 1):
    keys = mx.random.split(mx.random.key(seed), len(DOCUMENTS))
    return [mx.random.randint(0, 128, (n,), key=key) for n, key in zip(DOCUMENTS, keys)]


def pack(docs, padding: int = PADDING):
    """(tokens (1, L), int32 ids (1, L)): the documents end to end, then padding slots."""
    tokens = mx.concatenate([*docs, mx.zeros((padding,), dtype=docs[0].dtype)])
    ids = [i for i, d in enumerate(docs) for _ in range(d.size)] + [-1] * padding
    return tokens[None], mx.array([ids], dtype=mx.int32)


def token_losses(logits: mx.array, tokens: mx.array) -> mx.array:
    """Cross-entropy of predicting each next token, (B, L - 1)."""
    return nn.losses.cross_entropy(logits[:, :-1], tokens[:, 1:], reduction="none")


def unpacked_loss(model, docs) -> mx.array:
    """Summed over every document with a next token (a one-token document has none)."""
    return sum(token_losses(model(d[None]), d[None]).sum() for d in docs if d.size > 1)


def packed_loss(model, tokens, ids) -> mx.array:
    """The same sum as ``unpacked_loss``: targets in the same document as their input only.
    Call it inside ``packed(model, ids)``."""
    losses = token_losses(model(tokens), tokens)
    same_document = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)
    return mx.where(same_document, losses, 0).sum()


def assert_close(actual, expected, what, rtol=RTOL):
    err = mx.abs(actual - expected)
    scale = mx.abs(expected).max().item()
    assert err.max().item() <= rtol * scale, (
        f"{what}: max error {err.max().item():.3g}, mean {err.mean().item():.3g}, scale {scale:.3g}, rtol {rtol}"
    )


@pytest.mark.parametrize("checkpointed", [False, True], ids=["", "checkpointed"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_packed_equals_unpacked_logits_and_lora_gradients(model_type, name, checkpointed):
    """With gradient checkpointing the backward re-runs each block's forward while the
    gradient is built, so ``packed`` encloses the whole gradient call (as documented)."""
    model, docs = lora_model(model_type, name, checkpointed), documents()
    tokens, ids = pack(docs)
    with packed(model, ids):
        logits = model(tokens)
    start = 0
    for i, doc in enumerate(docs):
        alone = model(doc[None])
        assert_close(logits[:, start : start + doc.size], alone, f"logits of document {i}")
        start += doc.size

    expected_loss, expected = nn.value_and_grad(model, unpacked_loss)(model, docs)
    with packed(model, ids):
        loss, grads = nn.value_and_grad(model, packed_loss)(model, tokens, ids)
    assert_close(loss, expected_loss, "loss")
    expected, grads = dict(tree_flatten(expected)), dict(tree_flatten(grads))
    assert list(grads) == list(expected) and len(grads) == 2 * 7 * LORA["num_layers"]
    for key in expected:
        assert mx.abs(expected[key]).max().item() > 0, f"{key}: zero gradient tests nothing"
        assert_close(grads[key], expected[key], f"gradient of {key}")


@pytest.mark.parametrize("name", NAMES)
def test_packed_ids_are_an_input_under_compile(name):
    """A compiled step that enters ``packed`` inside takes the ids as an argument: new ids
    give new results (equal to the uncompiled ones), not those of the ids it was traced with."""
    model = lora_model("qwen2", name)
    docs = documents()
    tokens, ids = pack(docs)
    other_ids = mx.array([[0] * 10 + [1] * 12 + [-1] * 3], dtype=mx.int32)
    loss_and_grad = nn.value_and_grad(model, packed_loss)

    @mx.compile
    def step(tokens, ids):
        with packed(model, ids):
            loss, grads = loss_and_grad(model, tokens, ids)
            return model(tokens), loss, grads

    for segment_ids in (ids, other_ids, ids):
        logits, loss, grads = step(tokens, segment_ids)
        with packed(model, segment_ids):
            expected_loss, expected = loss_and_grad(model, tokens, segment_ids)
            assert_close(logits, model(tokens), "compiled logits")
        assert_close(loss, expected_loss, "compiled loss")
        for (key, got), (_, want) in zip(tree_flatten(grads), tree_flatten(expected)):
            assert_close(got, want, f"compiled gradient of {key}", rtol=1e-4)
    assert not mx.allclose(step(tokens, ids)[0], step(tokens, other_ids)[0])


def test_ids_live_on_the_blocks_only_inside_the_block():
    model = lora_model("llama", "practical")
    tokens, ids = pack(documents())
    blocks = [layer.self_attn for layer in model.layers]
    with pytest.raises(RuntimeError, match="inside"), packed(model, ids) as same:
        assert same is model and all(b._flashtune_segments is ids for b in blocks)
        raise RuntimeError("inside")
    assert all("_flashtune_segments" not in b.__dict__ for b in blocks)
    unpacked = model(tokens)
    with packed(model, ids):
        with packed(model, ids[:, ::-1]):
            pass
        assert all(b._flashtune_segments is ids for b in blocks)  # the outer ids are back
    assert mx.array_equal(model(tokens), unpacked)
    with packed(model, ids):
        unpatch(model)
    assert all("_flashtune_segments" not in b.__dict__ for b in blocks)
    assert flashtune.packed is packed


def test_runner_attention_passes_the_ids_on():
    """``python -m flashtune.patch`` patches with a counting wrapper; packed rows go through it."""
    from flashtune.patch.runner import CountingAttention

    model = lora_model("llama", "practical")
    tokens, ids = pack(documents())
    with packed(model, ids):
        expected = model(tokens)
    counting = patch(model, CountingAttention("practical")).layers[0].self_attn._flashtune_attn
    with packed(model, ids):
        assert mx.array_equal(model(tokens), expected)
    assert counting.calls == len(model.layers)


def test_kv_cache_inside_packed_raises():
    model = lora_model("llama", "baseline")
    tokens, ids = pack(documents())
    with packed(model, ids), pytest.raises(ValueError, match=r"KV cache.*outside `packed`"):
        model(tokens, cache=make_prompt_cache(model))


def test_unpatched_model_raises_saying_to_patch_first():
    model = tiny_model("qwen2")
    _, ids = pack(documents())
    message = r"flashtune.patch\(model, attn\) first.*2 supported"
    with pytest.raises(ValueError, match=message), packed(model, ids):
        pass


@pytest.mark.parametrize(
    "bad, message",
    [
        (mx.zeros((1, 25)), "int32 \\(B, L\\) array; got mlx.core.float32 \\(1, 25\\)"),
        (mx.zeros((25,), dtype=mx.int32), "got mlx.core.int32 \\(25,\\)"),
        ([[0] * 25], "got list"),
    ],
)
def test_bad_ids_raise(bad, message):
    model = lora_model("llama", "baseline")
    with pytest.raises(ValueError, match=message), packed(model, bad):
        pass


def test_attention_without_segments_keyword_raises():
    model = tiny_model("llama")
    _, ids = pack(documents())

    def plain(q, k, v, *, scale, mask=None):
        return attention.get("baseline")(q, k, v, scale=scale, mask=mask)

    refused = pytest.raises(ValueError, match="plain' takes no segments")
    with patched(model, plain), refused, packed(model, ids):
        pass
