"""flashtune.data: formats, malformed lines, length limits, batching, resumable order, shipped data."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from flashtune import (
    data,
    models,  # first: flashtune sets up the CPU BLAS before mlx loads
)
from flashtune.data import capitals


@pytest.fixture(scope="module")
def tokenizer():
    return models.gguf.tokenizer_from_gguf(models.gguf.embedded_gguf_path())


@pytest.fixture(scope="module")
def shipped(tokenizer):
    return data.load_dataset(None, tokenizer, mask_prompt=True, max_seq_length=128)


def _write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _toy(tokenizer, n=10, mask_prompt=False):
    """A dataset of n completions of different lengths."""
    rows = [{"prompt": f"Count to {i}.", "completion": " ".join(str(j) for j in range(i + 1))} for i in range(n)]
    return data.Dataset(
        examples=[
            data.Example(*data.tokenize_record(r, "completions", tokenizer, mask_prompt), f"toy:{i}")
            for i, r in enumerate(rows)
        ],  # fmt: skip
        path=None,
        format="completions",
        pad_id=2,
        mask_prompt=mask_prompt,
    )


# -- the shipped dataset ------------------------------------------------------------------------


def test_shipped_dataset_is_small_real_and_split(shipped, tokenizer):
    assert data.default_dataset_dir().is_dir()
    assert (len(shipped.train), len(shipped.valid), len(shipped.test)) == (390, 40, 40)
    assert shipped.train.format == "chat"
    for split in (shipped.train, shipped.valid, shipped.test):
        assert split.lengths.max() < 128
    example = shipped.train[0]
    answer = tokenizer.decode(example.tokens[example.offset :])
    assert answer.startswith("Capital: ") and " | Country: " in answer and answer.endswith("<|im_end|>\n")

    def countries(split):
        return {tokenizer.decode(e.tokens[e.offset :]).split("Country: ")[1].split(" |")[0] for e in split}

    # valid and test hold out whole countries
    assert not countries(shipped.train) & countries(shipped.valid)
    assert not countries(shipped.train) & countries(shipped.test)


def test_shipped_dataset_regenerates_identically():
    for name, text in capitals.build().items():
        target = data.default_dataset_dir() / (name if name.endswith(".md") else f"{name}.jsonl")
        assert target.read_text() == text, f"{target} is stale: run python scripts/make_dataset.py"


# -- formats and tokenization -------------------------------------------------------------------


def test_three_formats_tokenize_like_mlx_lm(tmp_path, tokenizer):
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    _write(tmp_path / "chat" / "train.jsonl", [{"messages": messages}])
    _write(tmp_path / "comp" / "train.jsonl", [{"prompt": "Hi there", "completion": "Hello!"}])
    _write(tmp_path / "text.jsonl", [{"text": "Hello world"}])
    chat = data.load_dataset(tmp_path / "chat", tokenizer).train
    comp = data.load_dataset(tmp_path / "comp", tokenizer).train
    text = data.load_dataset(tmp_path / "text.jsonl", tokenizer).train
    expected = tokenizer.apply_chat_template(messages)
    assert chat[0].tokens == comp[0].tokens == expected
    assert (chat.format, comp.format, text.format) == ("chat", "completions", "text")
    assert text[0].tokens == tokenizer.encode("Hello world") + [tokenizer.eos_token_id]
    assert chat[0].offset == 0


def test_prompt_masking(tmp_path, tokenizer):
    _write(tmp_path / "train.jsonl", [{"prompt": "Name a colour.", "completion": "Blue"}])
    example = data.load_dataset(tmp_path, tokenizer, mask_prompt=True).train[0]
    assert tokenizer.decode(example.tokens[example.offset :]) == "Blue<|im_end|>\n"
    batch = data.make_batch([example])
    # target j is token j+1: exactly the answer tokens count
    counted = np.array(batch.targets)[np.array(batch.mask) > 0].tolist()
    assert counted == example.tokens[example.offset :]
    _write(tmp_path / "text" / "train.jsonl", [{"text": "abc"}])
    with pytest.raises(data.DataFormatError, match="mask_prompt"):
        data.load_dataset(tmp_path / "text", tokenizer, mask_prompt=True)


def test_completions_without_chat_template(tmp_path):
    tokenizer = models.gguf.tokenizer_from_gguf(models.gguf.embedded_gguf_path())
    tokenizer._tokenizer.chat_template = None
    tokenizer.has_chat_template = False
    _write(tmp_path / "train.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    example = data.load_dataset(tmp_path, tokenizer, mask_prompt=True).train[0]
    assert tokenizer.decode(example.tokens) == "2+2=4<|im_end|>"
    assert tokenizer.decode(example.tokens[example.offset :]) == "4<|im_end|>"
    _write(tmp_path / "chat" / "train.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(data.DataFormatError, match="chat template"):
        data.load_dataset(tmp_path / "chat", tokenizer)


# -- malformed data -----------------------------------------------------------------------------

GOOD = {"prompt": "a", "completion": "b"}


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('{"prompt": "a", "completion": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"prompt": "a"}', "expected a string 'completion', got nothing"),
        ('{"prompt": "a", "completion": 3}', "expected a string 'completion', got int"),
        ('{"text": "a"}', "file format 'completions'"),
    ],
)
def test_malformed_line_names_file_line_and_expectation(tmp_path, tokenizer, bad_line, expected):
    path = _write(tmp_path / "train.jsonl", [GOOD, GOOD, "", bad_line, GOOD])
    with pytest.raises(data.DataFormatError) as err:
        data.load_dataset(tmp_path, tokenizer)
    assert isinstance(err.value, ValueError)
    assert f"{path}:4:" in str(err.value)  # line 3 is blank and still counts
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"messages": [{"role": "usr", "content": "x"}]}, "expected a role in"),
        ({"messages": []}, "non-empty list 'messages'"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0]: expected a string 'content'"),
        ({"question": "x", "answer": "y"}, "unknown format with keys ['answer', 'question']"),
    ],
)
def test_malformed_chat_and_unknown_format(tmp_path, tokenizer, row, expected):
    _write(tmp_path / "train.jsonl", [row])
    with pytest.raises(data.DataFormatError) as err:
        data.load_dataset(tmp_path, tokenizer)
    assert "train.jsonl:1:" in str(err.value) and expected in str(err.value)


def test_missing_files_and_empty_file(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_dataset(tmp_path / "nope", tokenizer)
    _write(tmp_path / "valid.jsonl", [GOOD])
    with pytest.raises(FileNotFoundError, match="no train.jsonl"):
        data.load_dataset(tmp_path, tokenizer)
    (tmp_path / "train.jsonl").write_text("\n")
    with pytest.raises(data.DataFormatError, match="no examples"):
        data.load_dataset(tmp_path, tokenizer)


# -- length limits ------------------------------------------------------------------------------


def test_too_long_raises_or_truncates_when_asked(tmp_path, tokenizer):
    _write(tmp_path / "train.jsonl", [GOOD, {"prompt": "a", "completion": "word " * 100}])
    with pytest.raises(data.SequenceTooLongError, match=r"train.jsonl:2, has \d+"):
        data.load_dataset(tmp_path, tokenizer, max_seq_length=64)
    with pytest.warns(UserWarning, match="truncated 1 of 2"):
        splits = data.load_dataset(tmp_path, tokenizer, max_seq_length=64, truncate=True)
    assert splits.train.lengths.max() == 64 and splits.train.n_truncated == 1
    with pytest.raises(ValueError, match="exceeds the model's context of 32"):
        data.load_dataset(tmp_path, tokenizer, max_seq_length=64, model_context=32)
    with pytest.raises(data.SequenceTooLongError, match="max_seq_length=32"):
        data.load_dataset(tmp_path, tokenizer, model_context=32)  # the context is the default limit


# -- batching -----------------------------------------------------------------------------------


@pytest.mark.parametrize("multiple", [1, 8, 128])
def test_batch_layout(tokenizer, multiple):
    dataset = _toy(tokenizer, mask_prompt=True)
    for batch in data.iterate_batches(dataset, 4, pad_to_multiple=multiple, loop=False):
        B, L = batch.inputs.shape
        assert B == 4 and L % multiple == 0
        assert (batch.inputs.dtype, batch.targets.dtype, batch.mask.dtype) == (mx.int32, mx.int32, mx.float32)
        assert batch.targets.shape == batch.mask.shape == (B, L)
        inputs, targets, mask = (np.array(a) for a in batch.arrays)
        for row in range(B):
            n = int(np.flatnonzero(mask[row])[-1]) + 1  # real positions; the answer runs to the end
            assert (inputs[row, 1:n] == targets[row, : n - 1]).all()  # targets are inputs shifted by one
            assert (inputs[row, n:] == dataset.pad_id).all() and not mask[row, n:].any()
        assert batch.ntokens == int(np.array(batch.mask).sum())
    longest = max(len(e.tokens) for e in dataset.examples) - 1
    last = list(data.iterate_batches(dataset, 4, pad_to_multiple=multiple, loop=False))
    assert max(b.inputs.shape[1] for b in last) == -(-longest // multiple) * multiple


def test_batches_sorted_by_length_and_cover_every_example(tokenizer):
    dataset = _toy(tokenizer, n=10)
    plan = data.batch_indices(dataset.lengths, 4)
    assert [len(b) for b in plan] == [4, 4, 4]
    assert set(i for b in plan for i in b) == set(range(10))  # the last batch overlaps, drops nothing
    maxima = [max(dataset.lengths[b]) for b in plan]
    assert maxima == sorted(maxima)
    with pytest.raises(ValueError, match="fewer than batch_size=11"):
        data.batch_indices(dataset.lengths, 11)


def test_order_is_seeded_and_resumable(tokenizer):
    dataset = _toy(tokenizer, n=10)

    def run(**kw):
        return [np.array(b.inputs).tolist() for b in data.iterate_batches(dataset, 4, **kw)]

    full = run(seed=7, num_steps=11)  # spans four epochs of three batches
    assert full == run(seed=7, num_steps=11)
    assert run(seed=7, start_step=5, num_steps=6) == full[5:]
    assert run(seed=8, num_steps=11) != full
    assert len(run(seed=7, loop=False)) == data.num_batches(dataset, 4) == 3
    assert len(run(seed=7, start_step=4, loop=False)) == 2  # the rest of epoch 1
