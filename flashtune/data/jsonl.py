"""Read, validate and tokenize one JSONL file; enforce the length limit (see flashtune.data)."""

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flashtune.errors import DataFormatError, SequenceTooLongError

FORMATS = ("completions", "chat", "text")
SPLITS = ("train", "valid", "test")
ROLES = ("system", "user", "assistant", "tool")
_EXAMPLES = {
    "completions": '{"prompt": "What is 2+2?", "completion": "4"}',
    "chat": '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
    "text": '{"text": "Once upon a time..."}',
}


@dataclass
class Example:
    """One tokenized example."""

    tokens: list[int]
    offset: int  # tokens[:offset] are prompt: targets at those positions are masked
    source: str  # "file:line"


@dataclass
class Dataset:
    """The tokenized examples of one split."""

    examples: list[Example]
    path: Path | None
    format: str
    pad_id: int
    mask_prompt: bool = False
    n_truncated: int = 0
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, idx: int) -> Example:
        return self.examples[idx]

    @property
    def lengths(self) -> np.ndarray:
        """Token count of every example."""
        return np.array([len(e.tokens) for e in self.examples], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """Provenance for run records: path, hash, format, sizes."""
        lengths = self.lengths
        return {
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "format": self.format,
            "examples": len(self),
            "tokens": int(lengths.sum()),
            "max_tokens": int(lengths.max()) if len(lengths) else 0,
            "mask_prompt": self.mask_prompt,
            "truncated": self.n_truncated,
        }


def read_jsonl(path: str | Path) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """Parse and validate a JSONL file without tokenizing.

    Args:
        path: the file.

    Returns:
        (format, [(line_number, record), ...]) with 1-based line numbers; blank lines skipped.

    Raises:
        DataFormatError: invalid JSON, a non-object line, a line not in the file's format,
            or no examples at all.
    """
    path = Path(path)
    records, fmt = [], None
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    f"{where}: invalid JSON ({e.msg}, column {e.colno}); each line must be one JSON "
                    f"object, e.g. {_EXAMPLES[fmt or 'completions']}"
                ) from None
            if not isinstance(record, dict):
                raise DataFormatError(
                    f"{where}: expected a JSON object, got {type(record).__name__}; "
                    f"e.g. {_EXAMPLES[fmt or 'completions']}"
                )
            if fmt is None:
                fmt = detect_format(record, where)
            _validate(record, fmt, where)
            records.append((line_no, record))
    if not records:
        raise DataFormatError(f"{path}: no examples (the file is empty)")
    return fmt, records


def detect_format(record: dict[str, Any], where: str = "") -> str:
    """The format of a record by its keys (mlx-lm's order: completions, chat, text)."""
    if "prompt" in record and "completion" in record:
        return "completions"
    if "messages" in record:
        return "chat"
    if "text" in record:
        return "text"
    choices = "; ".join(f"{k}: {v}" for k, v in _EXAMPLES.items())
    raise DataFormatError(f"{where}: unknown format with keys {sorted(record)}; expected one of {choices}")


def _validate(record: dict[str, Any], fmt: str, where: str) -> None:
    def fail(what):
        raise DataFormatError(f"{where}: {what} (file format '{fmt}', e.g. {_EXAMPLES[fmt]})")

    if fmt == "completions":
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                fail(f"expected a string {key!r}, got {_kind(record, key)}")
    elif fmt == "text":
        if not isinstance(record.get("text"), str) or not record["text"]:
            fail(f"expected a non-empty string 'text', got {_kind(record, 'text')}")
    else:
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            fail(f"expected a non-empty list 'messages', got {_kind(record, 'messages')}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                role = m.get("role") if isinstance(m, dict) else m
                fail(f"messages[{i}]: expected a role in {ROLES}, got {role!r}")
            if not isinstance(m.get("content"), str):
                fail(f"messages[{i}]: expected a string 'content', got {_kind(m, 'content')}")


def _kind(record: dict[str, Any], key: str) -> str:
    return "nothing" if key not in record else f"{type(record[key]).__name__} {record[key]!r:.40}"


def load_jsonl(path: str | Path, tokenizer, *, mask_prompt: bool = False) -> Dataset:
    """Read and tokenize one JSONL file (no length check; see `check_lengths`).

    Args:
        path: the file.
        tokenizer: the model's tokenizer.
        mask_prompt: leave prompts out of the loss.

    Returns:
        The `Dataset`.
    """
    path = Path(path)
    fmt, records = read_jsonl(path)
    if mask_prompt and fmt == "text":
        raise DataFormatError(
            f"{path}: mask_prompt needs a prompt, but the file is in 'text' format; use "
            f"'completions' ({_EXAMPLES['completions']}) or 'chat', or turn prompt masking off"
        )
    examples = []
    for line_no, record in records:
        where = f"{path}:{line_no}"
        tokens, offset = tokenize_record(record, fmt, tokenizer, mask_prompt, where)
        if offset >= len(tokens):
            raise DataFormatError(f"{where}: nothing left to learn: the whole example is prompt")
        examples.append(Example(tokens, offset, where))
    return Dataset(
        examples=examples,
        path=path,
        format=fmt,
        pad_id=_pad_id(tokenizer),
        mask_prompt=mask_prompt,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "has_chat_template", False) or getattr(tokenizer, "chat_template", None))


def _chat(tokenizer, messages, tools=None, add_generation_prompt=False) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return list(out["input_ids"] if isinstance(out, dict) else out)


def tokenize_record(record, fmt: str, tokenizer, mask_prompt: bool, where: str = "") -> tuple[list[int], int]:
    """Tokenize one validated record.

    Args:
        record: the JSON object.
        fmt: its format.
        tokenizer: the model's tokenizer.
        mask_prompt: compute the prompt length (else the offset is 0).
        where: "file:line" for error messages.

    Returns:
        (tokens, offset): offset is the number of leading prompt tokens left out of the loss.
    """
    eos = tokenizer.eos_token_id
    if fmt == "text":
        tokens = list(tokenizer.encode(record["text"]))
        return (tokens + [eos] if tokens[-1:] != [eos] else tokens), 0
    if fmt == "completions":
        if not _has_chat_template(tokenizer):
            prompt = list(tokenizer.encode(record["prompt"]))
            completion = list(tokenizer.encode(record["completion"], add_special_tokens=False))
            return prompt + completion + [eos], len(prompt) if mask_prompt else 0
        messages = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
        tools = record.get("tools")
    else:
        if not _has_chat_template(tokenizer):
            raise DataFormatError(f"{where}: the 'chat' format needs a tokenizer with a chat template")
        messages, tools = record["messages"], record.get("tools")
    tokens = _chat(tokenizer, messages, tools)
    if not mask_prompt:
        return tokens, 0
    if messages[-1]["role"] != "assistant":
        raise DataFormatError(f"{where}: mask_prompt needs the last message to be the assistant's answer")
    prompt = _chat(tokenizer, messages[:-1], tools, add_generation_prompt=True)
    # Templates may re-render earlier turns; only the shared prefix is prompt.
    offset = 0
    for a, b in zip(prompt, tokens):
        if a != b:
            break
        offset += 1
    return tokens, offset


def check_lengths(
    dataset: Dataset,
    max_seq_length: int | None,
    *,
    truncate: bool = False,
    model_context: int | None = None,
) -> Dataset:
    """Enforce the length limit: raise, or cut with a warning when ``truncate`` is set.

    Args:
        dataset: the tokenized split.
        max_seq_length: most tokens per example; None uses ``model_context`` (or no limit).
        truncate: cut longer examples to max_seq_length tokens instead of raising.
        model_context: the model's context length; max_seq_length may not exceed it.

    Returns:
        The dataset (a truncated copy when examples were cut).

    Raises:
        SequenceTooLongError: an example is too long and ``truncate`` is False, or truncating it
            would leave nothing to learn.
        ValueError: max_seq_length exceeds model_context or is < 2.
    """
    if max_seq_length is None:
        max_seq_length = model_context
    if max_seq_length is None:
        return dataset
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be at least 2 tokens, got {max_seq_length}")
    if model_context is not None and max_seq_length > model_context:
        raise ValueError(f"max_seq_length={max_seq_length} exceeds the model's context of {model_context} tokens")
    too_long = [e for e in dataset.examples if len(e.tokens) > max_seq_length]
    if not too_long:
        return dataset
    longest = max(too_long, key=lambda e: len(e.tokens))
    if not truncate:
        raise SequenceTooLongError(
            f"{len(too_long)} example(s) of {dataset.path} exceed max_seq_length={max_seq_length} "
            f"tokens; the longest, {longest.source}, has {len(longest.tokens)}. Raise max_seq_length"
            f"{f' (the model allows {model_context})' if model_context else ''}, shorten or split those "
            "examples, or opt in to truncation (truncate=True, --truncate)."
        )
    examples = []
    for e in dataset.examples:
        if len(e.tokens) > max_seq_length:
            if e.offset >= max_seq_length - 1:
                raise SequenceTooLongError(
                    f"{e.source}: the prompt alone has {e.offset} tokens; truncating to "
                    f"max_seq_length={max_seq_length} would leave nothing to learn"
                )
            e = Example(e.tokens[:max_seq_length], e.offset, e.source)
        examples.append(e)
    warnings.warn(
        f"truncated {len(too_long)} of {len(dataset)} examples of {dataset.path} to "
        f"max_seq_length={max_seq_length} tokens (longest was {longest.source}, {len(longest.tokens)} tokens)",
        stacklevel=2,
    )
    return Dataset(
        examples=examples,
        path=dataset.path,
        format=dataset.format,
        pad_id=dataset.pad_id,
        mask_prompt=dataset.mask_prompt,
        n_truncated=len(too_long),
        sha256=dataset.sha256,
    )
