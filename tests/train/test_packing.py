"""Packed training: a packed batch's loss and LoRA gradients are those of its documents run one by
one; `flashtune train --pack` learns, records its documents and resumes exactly."""

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

import flashtune  # noqa: F401
from flashtune import attention, data
from flashtune.data import packing
from flashtune.patch import patch
from flashtune.train import loop, records
from flashtune.train.fused_projections import fuse_projections
from flashtune.train.lora import adapter_config, apply_lora, enable_grad_checkpoint
from flashtune.train.step import make_steps
from tests.tiny_models import tiny_model, train_config

LENGTHS = (9, 1, 23, 14)  # tokens per document; a one-token document has nothing to predict


def documents(seed=0):
    rng = np.random.default_rng(seed)
    return [
        data.Example(rng.integers(4, 128, size=n + 1).tolist(), offset=min(2, n), source=f"doc{i}")
        for i, n in enumerate(LENGTHS)
    ]


def lora_model(model_type, attn, checkpointed):
    model = tiny_model(model_type, seed=1)
    mx.random.seed(2)
    apply_lora(model, adapter_config(2, 4, 20.0, 0.0))
    # LoRA B starts at zero; give it values so that every LoRA gradient is non-trivial.
    lora_b = [
        (k, mx.random.normal(v.shape) * 0.05)
        for k, v in tree_flatten(model.trainable_parameters())
        if k.endswith("lora_b")
    ]
    model.load_weights(lora_b, strict=False)
    patch(model, attn)
    fuse_projections(model)  # the trainer's default
    if checkpointed:
        enable_grad_checkpoint(model)
    return model


def loss_and_grads(model, batch):
    """The trainer's micro-batch step (uncompiled): summed loss, tokens and gradients."""
    optimizer = optim.AdamW(learning_rate=1e-3)
    loss, tokens, grads = make_steps(model, optimizer, None, 1, compile=False).micro(*batch.arrays)
    return loss.item(), tokens.item(), dict(tree_flatten(grads))


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", attention.names())
@pytest.mark.parametrize("checkpointed", [False, True], ids=["", "grad-checkpoint"])
def test_packed_batch_equals_its_documents_run_one_by_one(model_type, attn, checkpointed):
    docs = documents()
    model = lora_model(model_type, attn, checkpointed)
    packed = packing.make_packed_batch([docs[:2], docs[2:], []], pack_length=40)
    loss, tokens, grads = loss_and_grads(model, packed)
    want_loss, want_tokens, want_grads = 0.0, 0.0, None
    for doc in docs:
        doc_loss, doc_tokens, g = loss_and_grads(model, data.make_batch([doc]))
        want_loss, want_tokens = want_loss + doc_loss, want_tokens + doc_tokens
        want_grads = g if want_grads is None else {k: want_grads[k] + g[k] for k in g}
    assert tokens == want_tokens
    assert loss == pytest.approx(want_loss, rel=1e-5)
    for name, g in want_grads.items():
        got, want = np.array(grads[name]), np.array(g)
        error = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
        assert error < 1e-5, f"{name}: relative error {error:.2e}, max abs {np.abs(got - want).max():.2e}"


# Packed runs: 12 iterations into rows of 64 slots, a validation every 6, no checkpoint but the last.
PACKED = dict(iters=12, warmup=2, steps_per_eval=6, steps_per_save=100, pack=True, pack_length=64)


def make_config(tiny, out, **overrides):
    return train_config(tiny, out, **{**PACKED, **overrides})


def test_train_with_pack_learns_and_records_documents(tiny, tmp_path):
    summary = loop.train(make_config(tiny, tmp_path / "run", iters=20))
    steps = records.training_steps(records.read(tmp_path / "run" / "records.jsonl"))
    assert {tuple(r["shape"]) for r in steps} == {(2, 64)}
    assert all(r["documents"] >= 2 for r in steps) and max(r["documents"] for r in steps) > 2
    assert all(r["input_tokens"] <= r["padded_tokens"] for r in steps)
    assert summary["slot_fill"] > 0.5
    assert summary["final_loss"] < 0.7 * summary["first_loss"]


def test_packed_run_resumes_exactly(tiny, tmp_path, monkeypatch):
    loop.train(make_config(tiny, tmp_path / "straight"))
    original = data.iterate_packed_batches

    def interrupted(*args, **kwargs):
        for i, batch in enumerate(original(*args, **kwargs)):
            if i == 5:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(loop.data, "iterate_packed_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.train(make_config(tiny, tmp_path / "resumed"))
    monkeypatch.setattr(loop.data, "iterate_packed_batches", original)
    loop.train(make_config(tiny, tmp_path / "resumed", resume=True))
    straight = records.training_steps(records.read(tmp_path / "straight" / "records.jsonl"))
    resumed = records.training_steps(records.read(tmp_path / "resumed" / "records.jsonl"))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


def test_pack_with_fixed_length_is_refused_before_loading(tiny, tmp_path):
    with pytest.raises(ValueError, match="--pack-length"):
        loop.train(make_config(tiny, tmp_path / "run", fixed_length=64))
