"""Deterministic timing datasets: ``{"text": ...}`` JSONL whose examples have chosen token counts.

Timing does not depend on what the text says, only on how many tokens each example has, so the
text is made of words ``w3 w17 ...`` and its length is fitted with the model's own tokenizer
(the path both flashtune and mlx_lm.lora use: ``tokenizer.encode(text)`` plus EOS). With the
word-level stand-in tokenizer written by `write_word_tokenizer` (one token per word, ids
spread over the model's whole vocabulary) every count is exact; with a BPE tokenizer the fit
is the longest text not over the target.

Three kinds of data:
- ``variable``: lengths drawn uniformly from [lo, hi] tokens (default 300-1020, as mlx_lm.lora
  was measured in the anchors), for the main 100-iteration comparison;
- ``fixed``: every example exactly ``length + 1`` tokens, for the trainer's ``fixed_length``
  option (inputs are one shorter), so every step of a sequence-length sweep has one shape;
- ``chat``: long-tailed lengths as chat data has them (many short turns, a few long ones):
  log-normal with median ``median`` tokens and ``sigma`` the standard deviation of the log
  length (default 200 and 1.0: a tenth of the examples over 720 tokens, one in a hundred over
  2048), rounded and clipped to [lo, hi] (default 16-2048), for the packing comparison.
"""

import hashlib
import json
import math
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

SPECIALS = ("<unk>", "<s>", "</s>")
KINDS = ("variable", "fixed", "chat")
CLIP = {"variable": (300, 1020), "chat": (16, 2048)}  # default [lo, hi] per kind


def write_word_tokenizer(path: Path, vocab_size: int) -> Path:
    """Writes a word-level tokenizer (tokenizer.json + tokenizer_config.json) into ``path``.

    Args:
        path: folder (created).
        vocab_size: the model's vocabulary size; words ``w3 .. w{vocab_size-1}`` get ids 3.. .

    Returns:
        ``path``. ``transformers.AutoTokenizer`` and ``mlx_lm.load`` read it offline.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {name: i for i, name in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return save_tokenizer_folder(tokenizer, path, model_max_length=1 << 20)


def save_tokenizer_folder(tokenizer, path: Path, **config) -> Path:
    """Saves a ``tokenizers.Tokenizer`` with <s>/</s>/<unk> specials as a folder that
    ``transformers.AutoTokenizer`` (and so ``mlx_lm.load``) reads offline.

    Args:
        config: more ``tokenizer_config.json`` keys (e.g. ``model_max_length``, ``pad_token``).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        **config,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return path


def token_counter(tokenizer) -> Callable[[str], int]:
    """Tokens of one ``{"text": ...}`` example as both trainers see it (encode, then EOS if absent)."""
    eos = tokenizer.eos_token_id

    def count(text: str) -> int:
        tokens = list(tokenizer.encode(text))
        return len(tokens) + (0 if tokens[-1:] == [eos] else 1)

    return count


def fit_text(count: Callable[[str], int], target: int, rng: random.Random, vocab_hi: int) -> str:
    """The longest text of random words whose token count is at most ``target`` (binary search)."""
    words = [f"w{rng.randrange(len(SPECIALS), vocab_hi)}" for _ in range(target)]
    if count(" ".join(words[: target - 1])) == target:  # one token per word (+ EOS): exact at once
        return " ".join(words[: target - 1])
    lo, hi = 1, target  # each word is at least one token, so target words is an upper bound
    per_word = count(" ".join(words)) / target  # narrow the search around the average
    guess_lo, guess_hi = int(target / per_word * 0.95), int(target / per_word * 1.05) + 1
    if 1 <= guess_lo and count(" ".join(words[:guess_lo])) <= target:
        lo = guess_lo
    if guess_hi < target and count(" ".join(words[:guess_hi])) > target:
        hi = guess_hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= target:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def _write_split(path: Path, texts: Sequence[str]) -> str:
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    path.write_text(body)
    return hashlib.sha256(body.encode()).hexdigest()


def make_dataset(
    folder: Path,
    tokenizer,
    *,
    kind: str,
    seed: int = 0,
    lo: int | None = None,
    hi: int | None = None,
    n_train: int = 400,
    n_valid: int = 32,
    length: int | None = None,
    median: int = 200,
    sigma: float = 1.0,
    vocab_hi: int | None = None,
) -> dict:
    """Writes train.jsonl (and valid.jsonl when ``n_valid``) and meta.json into ``folder``.

    Args:
        folder: output folder (created; its files are replaced).
        tokenizer: the model's tokenizer (counts tokens exactly as the trainers do).
        kind: ``"variable"`` (lengths uniform in [lo, hi] tokens), ``"fixed"`` (``length + 1``
            tokens each, for ``fixed_length=length``) or ``"chat"`` (log-normal lengths with
            median ``median`` and log standard deviation ``sigma``, clipped to [lo, hi]).
        seed: random seed; the same arguments give the same files.
        lo, hi: the length range in tokens (default 300-1020 for variable, 16-2048 for chat).
        n_train, n_valid: examples per split (no valid.jsonl when ``n_valid`` is 0).
        median, sigma: the chat kind's distribution.
        vocab_hi: words are drawn from ids below this (default: the tokenizer's vocabulary).

    Returns:
        The metadata written to meta.json (arguments, the length distribution in words, token
        statistics and sha256 of each split).
    """
    lo, hi = _length_range(kind, lo, hi, length)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # long texts are counted, never fed to a model here
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    count = token_counter(tokenizer)
    vocab_hi = vocab_hi or len(tokenizer.get_vocab())

    def targets(n: int) -> list[int]:
        if kind == "fixed":
            return [length + 1] * n
        if kind == "chat":
            return [min(max(round(rng.lognormvariate(math.log(median), sigma)), lo), hi) for _ in range(n)]
        return [rng.randint(lo, hi) for _ in range(n)]

    meta = {
        "kind": kind,
        "seed": seed,
        "lo": lo,
        "hi": hi,
        "length": length,
        "vocab_hi": vocab_hi,
        "distribution": describe(kind, lo, hi, length, median, sigma),
    }
    if kind == "chat":
        meta.update(median=median, sigma=sigma)
    for split, n in (("train", n_train), ("valid", n_valid)):
        target = folder / f"{split}.jsonl"
        if not n:
            target.unlink(missing_ok=True)
            continue
        texts = [fit_text(count, t, rng, vocab_hi) for t in targets(n)]
        meta[split] = _split_meta(texts, count, _write_split(target, texts))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _length_range(kind: str, lo: int | None, hi: int | None, length: int | None) -> tuple[int, int]:
    """The kind's [lo, hi] token range (its default where not given), checked."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "fixed" and not length:
        raise ValueError("kind='fixed' needs length")
    lo, hi = (lo or CLIP.get(kind, (0, 0))[0]), (hi or CLIP.get(kind, (0, 0))[1])
    if kind != "fixed" and not 2 <= lo <= hi:
        raise ValueError(f"kind={kind!r} needs 2 <= lo <= hi, got lo={lo}, hi={hi}")
    return lo, hi


def _split_meta(texts: Sequence[str], count: Callable[[str], int], sha256: str) -> dict:
    """Token statistics of one split for meta.json."""
    counts = sorted(count(t) for t in texts)
    n = len(counts)
    return {
        "examples": n, "tokens": sum(counts), "min_tokens": counts[0], "max_tokens": counts[-1],
        "median_tokens": statistics.median(counts), "p90_tokens": counts[int(0.9 * (n - 1))], "sha256": sha256,
    }  # fmt: skip


def describe(kind: str, lo: int, hi: int, length: int | None, median: int, sigma: float) -> str:
    """The length distribution of a dataset in words (meta.json's ``distribution``)."""
    if kind == "fixed":
        return f"every example {length + 1} tokens"
    if kind == "chat":
        return f"log-normal: median {median} tokens, standard deviation of the log length {sigma:g}, rounded and clipped to [{lo}, {hi}]"
    return f"uniform in [{lo}, {hi}] tokens"


def ensure_dataset(folder: Path, tokenizer, **kwargs) -> dict:
    """`make_dataset` unless ``folder`` already holds the data these arguments make (meta.json)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    wanted = {
        k: v for k, v in kwargs.items() if k in ("kind", "seed", "lo", "hi", "length", "median", "sigma", "vocab_hi")
    }
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        same = all(meta.get(k) == v for k, v in wanted.items())
        n_ok = meta.get("train", {}).get("examples") == kwargs.get("n_train", 400)
        if same and n_ok and (folder / "train.jsonl").is_file():
            return meta
    return make_dataset(folder, tokenizer, **kwargs)
