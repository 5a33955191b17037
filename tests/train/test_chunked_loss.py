"""The chunked cross-entropy against a float64 reference: loss and gradients, every head kind,
under mx.compile and grad checkpointing, and its memory bound against the plain loss."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map
from mlx_lm.tuner.lora import LoRALinear

import flashtune  # noqa: F401
from flashtune.train import chunked_loss
from flashtune.train.lora import adapter_config, apply_lora, enable_grad_checkpoint
from flashtune.train.step import loss_sum, make_steps
from tests.tiny_models import tiny_model

B, L = 2, 37  # 74 tokens: chunks of 10 leave a last chunk of 4


def batch(vocab: int = 128, seed: int = 1):
    """Inputs, targets and a mask with prompt-like zeros (the first 9 tokens of each row, and more)."""
    mx.random.seed(seed)
    inputs = mx.random.randint(0, vocab, (B, L))
    targets = mx.random.randint(0, vocab, (B, L))
    mask = (mx.random.uniform(shape=(B, L)) > 0.25).astype(mx.float32)
    mask[:, :9] = 0.0
    return inputs, targets, mask


def make_head_trainable(model, kind: str):
    """Which head parameters train: none (frozen), "lora" on lm_head, or the full head ("full")."""
    model.freeze()
    if kind == "lora":
        model.lm_head = LoRALinear.from_base(model.lm_head, r=4, scale=2.0)
        # LoRA starts with B = 0, which would leave A's gradient zero: give both values.
        model.lm_head.lora_b = 0.1 * mx.random.normal(model.lm_head.lora_b.shape)
    elif kind == "full":
        _, head, _ = chunked_loss.split_model(model)
        head.module.unfreeze()
    mx.eval(model.parameters())
    return model


def loss_and_grads(model, hidden, targets, mask, loss_fn):
    """loss_fn(hidden, head) -> scalar; returns (loss, d hidden, {name: d param}) of the head's trainable parameters."""
    _, head, _ = chunked_loss.split_model(model)
    params = head.module.trainable_parameters()

    def f(hidden, params):
        head.module.update(params)
        return loss_fn(hidden, head)

    saved = head.module.trainable_parameters()
    try:
        value, (d_hidden, d_params) = mx.value_and_grad(f, argnums=(0, 1))(hidden, params)
        mx.eval(value, d_hidden, d_params)
    finally:
        head.module.update(saved)
    return value, d_hidden, dict(tree_flatten(d_params))


def reference(hidden, head, targets, mask):
    """float64 masked cross-entropy (log-sum-exp minus the target logit)."""
    logits = head.fn(hidden)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return ((mx.logsumexp(logits, axis=-1) - picked) * mask).sum()


def plain(hidden, head, targets, mask):
    return (mx.fast.cross_entropy(head.fn(hidden), targets) * mask).astype(mx.float32).sum()


def as_float64(model):
    """The same model with every parameter in float64 (CPU)."""
    model.update(tree_map(lambda p: p.astype(mx.float64), model.parameters()))
    return model


def errors(got, expected):
    diff = np.abs(np.array(got, dtype=np.float64) - np.array(expected, dtype=np.float64))
    return diff.max(), diff.mean(), np.abs(np.array(expected, dtype=np.float64)).max()


@pytest.mark.parametrize("model_type,tied,trainable", [
    ("llama", False, "none"), ("llama", False, "lora"), ("llama", False, "full"),
    ("qwen2", True, "none"), ("qwen2", True, "full"),
])  # fmt: skip
def test_loss_and_gradients_match_float64(model_type, tied, trainable):
    """Loss and gradients (hidden states, trainable head parameters) within float32 rounding of a
    float64 reference, no further from it than the plain float32 loss is (x2, flash-attention's
    rule); the last chunk is shorter, prompt tokens are masked."""
    model = make_head_trainable(tiny_model(model_type, tie_word_embeddings=tied), trainable)
    inputs, targets, mask = batch()
    with mx.stream(mx.cpu):
        hidden = model.model(inputs)
        got = loss_and_grads(
            model, hidden, targets, mask, lambda h, head: chunked_loss.cross_entropy_sum(h, targets, mask, head, 10)
        )
        low = loss_and_grads(model, hidden, targets, mask, lambda h, head: plain(h, head, targets, mask))
        exact = loss_and_grads(
            as_float64(model),
            hidden.astype(mx.float64),
            targets,
            mask,
            lambda h, head: reference(h, head, targets, mask),
        )
    assert set(got[2]) == set(exact[2]) and (trainable == "none") == (not exact[2])
    pairs = [("loss", got[0], low[0], exact[0]), ("d hidden", got[1], low[1], exact[1])]
    pairs += [(f"d {name}", got[2][name], low[2][name], exact[2][name]) for name in exact[2]]
    for name, ours, theirs, truth in pairs:
        worst, mean, scale = errors(ours, truth)
        plain_worst = errors(theirs, truth)[0]
        message = f"{name}: max error {worst:.3g}, mean {mean:.3g} (plain float32: max {plain_worst:.3g}; values up to {scale:.3g})"
        assert worst <= 2 * plain_worst + 1e-6 * scale, message
        assert worst <= 1e-5 * scale, message


def test_whole_model_loss_and_lora_gradients_match_the_plain_loss():
    """Through the trainer's loss_sum: LoRA on every block and the tied head's embedding path."""
    model = tiny_model("qwen2", tie_word_embeddings=True)
    apply_lora(model, adapter_config(2, 4, 20.0, 0.0))
    model.update(tree_map(lambda p: p + 0.05 if p.ndim == 2 and p.shape[0] == 4 else p, model.trainable_parameters()))
    inputs, targets, mask = batch()
    value_and_grad = nn.value_and_grad(model, loss_sum)
    (plain_loss, count), plain_grads = value_and_grad(model, inputs, targets, mask)
    (loss, chunked_count), grads = value_and_grad(model, inputs, targets, mask, 16)
    assert count.item() == chunked_count.item() == mask.sum().item()
    np.testing.assert_allclose(loss.item(), plain_loss.item(), rtol=1e-6)
    expected = dict(tree_flatten(plain_grads))
    for name, g in tree_flatten(grads):
        np.testing.assert_allclose(
            np.array(g),
            np.array(expected[name]),
            rtol=1e-4,
            atol=1e-6 * np.abs(np.array(expected[name])).max(),
            err_msg=name,
        )


def test_compiled_steps_with_grad_checkpoint_train_like_the_plain_loss():
    """The trainer's compiled step with grad checkpointing: three AdamW steps, same losses."""
    losses = {}
    for chunk in (None, 8):
        model = tiny_model("llama")
        apply_lora(model, adapter_config(2, 4, 20.0, 0.0))
        enable_grad_checkpoint(model)
        optimizer = optim.AdamW(learning_rate=1e-2)
        optimizer.init(model.trainable_parameters())
        model.train()
        steps = make_steps(model, optimizer, None, 1, compile=True, loss_chunk_tokens=chunk)
        losses[chunk] = []
        for _ in range(3):
            loss, _ = steps.full(*batch())
            mx.eval(loss, steps.state)
            losses[chunk].append(loss.item())
    np.testing.assert_allclose(losses[8], losses[None], rtol=1e-5)
    assert losses[8][2] < losses[8][0]


def extra_peak(fn, *args) -> int:
    mx.eval(*args)
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(fn(*args))
    return mx.get_peak_memory() - base


@pytest.mark.parametrize("compiled", [False, True])
def test_peak_memory_stays_flat_as_tokens_grow(compiled):
    """Forward and backward of the loss at N and 2N tokens (CPU): the plain loss's extra peak is
    (N x V) logits, softmax and gradient and doubles with N; the chunked one's stays the same,
    a few chunks' worth (MLX dispatches a bounded number of operations ahead of the CPU)."""
    V, D, chunk = 4096, 64, 128
    mx.random.seed(0)
    head_module = nn.Linear(D, V, bias=False)
    head_module.freeze()
    head = chunked_loss.Head(head_module, head_module, V)
    peaks = {}
    with mx.stream(mx.cpu):
        for N in (2048, 4096):
            hidden = mx.random.normal((1, N, D))
            targets = mx.random.randint(0, V, (1, N))
            mask = mx.ones((1, N))
            losses = {
                "plain": partial(plain, head=head, targets=targets, mask=mask),
                "chunked": partial(
                    chunked_loss.cross_entropy_sum, targets=targets, mask=mask, head=head, chunk_tokens=chunk
                ),
            }
            for name, loss in losses.items():
                step = mx.value_and_grad(loss)
                peaks[name, N] = extra_peak(mx.compile(step) if compiled else step, hidden)
    logits_bytes = 4096 * V * 4
    mib = {k: round(v / 2**20) for k, v in peaks.items()}
    assert peaks["plain", 4096] >= 2 * logits_bytes, mib
    assert peaks["plain", 4096] > 1.8 * peaks["plain", 2048], mib
    assert peaks["chunked", 4096] <= 1.1 * peaks["chunked", 2048], mib
    assert peaks["chunked", 4096] <= 0.15 * peaks["plain", 4096], mib


def test_default_chunk_follows_the_vocabulary():
    assert [chunked_loss.default_chunk_tokens(v) for v in (151936, 49152, 32000)] == [128, 256, 512]
    assert chunked_loss.default_chunk_tokens(10**9) == chunked_loss.CHUNK_MULTIPLE
    with pytest.raises(ValueError, match="vocab_size"):
        chunked_loss.default_chunk_tokens(0)


def test_unsupported_models_fall_back_to_the_plain_loss_once(caplog):
    class Bigram(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(16, 16)

        def __call__(self, x):
            return self.embed(x)

    model = Bigram()
    assert chunked_loss.chunk_tokens_for(model, enabled=True) is None
    inputs, targets, mask = (mx.zeros((1, 5), mx.int32), mx.ones((1, 5), mx.int32), mx.ones((1, 5)))
    (loss, _), (expected, _) = loss_sum(model, inputs, targets, mask, 4), loss_sum(model, inputs, targets, mask)
    assert loss.item() == expected.item()
    said = "\n".join(caplog.messages)
    assert said.count("chunked loss: tests.train.test_chunked_loss.Bigram is not one of the mlx-lm model files") == 1, (
        said
    )
    assert "using the plain loss" in said
    assert chunked_loss.chunk_tokens_for(tiny_model("llama"), enabled=False) is None
    assert chunked_loss.chunk_tokens_for(tiny_model("llama"), enabled=True) == chunked_loss.default_chunk_tokens(128)
    assert chunked_loss.chunk_tokens_for(tiny_model("llama"), enabled=True, chunk_tokens=7) == 7
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_loss.cross_entropy_sum(
            mx.zeros((1, 4, 64)),
            mx.zeros((1, 4), mx.int32),
            mx.ones((1, 4)),
            chunked_loss.split_model(tiny_model())[1],
            0,
        )


def test_trainer_default_and_no_chunked_loss_train_alike(tmp_path):
    """`flashtune train` on a tiny local model: the default (chunked loss, chunks smaller than a
    batch) and --no-chunked-loss record the same losses within float32 rounding."""
    from flashtune import config as config_module
    from flashtune.train import loop, records
    from tests.tiny_models import write_text_dataset, write_tiny_hf_model

    model_dir, data_dir = write_tiny_hf_model(tmp_path / "model"), write_text_dataset(tmp_path / "data")
    losses = {}
    for chunked in (True, False):
        out = tmp_path / f"chunked-{chunked}"
        config = config_module.resolve(
            None, model=str(model_dir), data=str(data_dir), out=str(out), iters=6, batch_size=2, lora_layers=2,
            learning_rate=1e-3, warmup=0, steps_per_eval=3, val_batches=2, steps_per_save=100, sample=False,
            attn="practical", chunked_loss=chunked, loss_chunk_tokens=5,
        )  # fmt: skip
        loop.train(config)
        rows = records.read(out / "records.jsonl")
        losses[chunked] = [r["loss"] for r in rows if "wall_s" in r] + [r["val_loss"] for r in rows if r.get("eval")]
    assert len(losses[True]) == 6 + 3
    np.testing.assert_allclose(
        losses[True], losses[False], rtol=1e-5, err_msg=f"chunked {losses[True]} plain {losses[False]}"
    )
