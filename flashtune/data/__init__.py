"""JSONL datasets in mlx-lm's formats, tokenized with the model's chat template, batched for training.

Data on disk (the same as ``mlx_lm lora --data``): a directory with ``train.jsonl`` and optionally
``valid.jsonl`` and ``test.jsonl``, or a single ``.jsonl`` file (train only). Each non-blank line
is one JSON object in one of three formats, decided by the first line and then required on
every line:

- ``completions``: ``{"prompt": "...", "completion": "..."}``, rendered as a user/assistant chat
  with the tokenizer's chat template (plain concatenation + EOS if it has none);
- ``chat``: ``{"messages": [{"role": "user", "content": "..."}, ...]}`` (optional ``"tools"``),
  rendered with the chat template;
- ``text``: ``{"text": "..."}``, encoded as is, EOS appended.

``mask_prompt=True`` excludes the prompt (everything before the last assistant message) from
the loss. Malformed lines raise `DataFormatError` (a ValueError) naming file, line and what was
expected, before any training.

Length limit: ``max_seq_length`` bounds the number of tokens of one example (inputs are one
shorter). An example over the limit raises `SequenceTooLongError` (a ValueError) naming it,
unless ``truncate=True``: then it is cut to ``max_seq_length`` tokens with one warning that
counts the cut examples. ``model_context`` (the model's max_position_embeddings) caps
``max_seq_length`` and is the limit when none is given.

Batches: `iterate_batches` yields `Batch(inputs, targets, mask)`:

- ``inputs``  mx.array int32 (B, L): tokens[:-1] of each example, right-padded with ``pad_id``;
- ``targets`` mx.array int32 (B, L): tokens[1:], padded the same way;
- ``mask``    mx.array float32 (B, L): 1.0 where the target counts in the loss (a real token and,
  with ``mask_prompt``, not part of the prompt), else 0.0. Loss = sum(ce * mask) / sum(mask).

L is the longest input of the batch rounded up to ``pad_to_multiple``, or to the smallest of
``pad_lengths`` that holds it (the trainer plans these per run, see flashtune.data.shapes; on CUDA they
are multiples of 128, which MLX's fused attention backward needs), so L may exceed
max_seq_length - 1.
Padding sits at the end and causal attention never lets real positions see it.

Order: examples are sorted by length and cut into fixed batches of ``batch_size`` (the last one
overlaps its neighbour rather than dropping the longest examples); each epoch visits the batches
in a permutation drawn from ``(seed, epoch)``. Step k of a run is therefore a pure function of
(dataset, batch_size, seed, k): ``start_step=k`` resumes exactly where a run stopped.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batches import (
    Batch,
    batch_examples,
    batch_indices,
    epoch_order,
    iterate_batches,
    longest_input,
    make_batch,
    num_batches,
)
from .jsonl import (
    FORMATS,
    SPLITS,
    DataFormatError,
    Dataset,
    Example,
    SequenceTooLongError,
    check_lengths,
    detect_format,
    load_jsonl,
    read_jsonl,
    tokenize_record,
)
from .packing import iterate_packed_batches, make_packed_batch

__all__ = [
    "FORMATS",
    "Batch",
    "DataFormatError",
    "Dataset",
    "DatasetSplits",
    "Example",
    "SequenceTooLongError",
    "batch_indices",
    "check_lengths",
    "default_dataset_dir",
    "detect_format",
    "epoch_order",
    "iterate_batches",
    "iterate_packed_batches",
    "make_packed_batch",
    "batch_examples",
    "longest_input",
    "load_dataset",
    "load_jsonl",
    "make_batch",
    "num_batches",
    "read_jsonl",
    "tokenize_record",
]


@dataclass
class DatasetSplits:
    """train (required), valid and test (None when the file is absent)."""

    train: Dataset
    valid: Dataset | None = None
    test: Dataset | None = None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def default_dataset_dir() -> Path:
    """The dataset shipped with flashtune (capital-city answer cards; see its README.md)."""
    return Path(__file__).resolve().parent.parent / "datasets" / "capitals"


def load_dataset(
    path: str | Path | None,
    tokenizer,
    *,
    mask_prompt: bool = False,
    max_seq_length: int | None = None,
    truncate: bool = False,
    model_context: int | None = None,
) -> DatasetSplits:
    """Read, validate and tokenize a dataset.

    Args:
        path: a directory with train.jsonl (+ valid.jsonl, test.jsonl), a .jsonl file (train
            only), or None for `default_dataset_dir()`.
        tokenizer: the model's tokenizer (mlx-lm TokenizerWrapper or transformers tokenizer).
        mask_prompt: leave prompts out of the loss (completions and chat formats).
        max_seq_length: most tokens per example; see the module docstring.
        truncate: cut longer examples (with a warning) instead of raising.
        model_context: the model's max_position_embeddings, checked against max_seq_length.

    Returns:
        `DatasetSplits` of tokenized `Dataset` objects.

    Raises:
        FileNotFoundError: no such path, or a directory without train.jsonl.
        DataFormatError: a malformed line (file, line number and expected format in the message).
        SequenceTooLongError: an example over max_seq_length without ``truncate``.
    """
    root = default_dataset_dir() if path is None else Path(path).expanduser()
    if root.is_file():
        files = {"train": root}
    elif root.is_dir():
        files = {s: root / f"{s}.jsonl" for s in SPLITS if (root / f"{s}.jsonl").is_file()}
        if "train" not in files:
            present = sorted(p.name for p in root.iterdir())[:10]
            raise FileNotFoundError(
                f"data directory {root} has no train.jsonl (found: {present}); expected "
                "train.jsonl and valid.jsonl (optionally test.jsonl), as for mlx_lm lora --data"
            )
    else:
        raise FileNotFoundError(
            f"data path {root} does not exist; expected a directory with train.jsonl and "
            "valid.jsonl (like mlx_lm lora --data) or a single .jsonl file"
        )
    splits = {}
    for split, file in files.items():
        dataset = load_jsonl(file, tokenizer, mask_prompt=mask_prompt)
        splits[split] = check_lengths(dataset, max_seq_length, truncate=truncate, model_context=model_context)
    return DatasetSplits(path=root, **splits)
