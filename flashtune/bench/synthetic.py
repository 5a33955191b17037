"""Timing datasets of chosen token lengths, built from the shipped capitals text.

Timing does not depend on what the text says, only on how many tokens it has, so long
examples are stitched from real sentences (the shipped dataset's questions and answer cards)
and cut to an exact token count with the model's own tokenizer.

    python -m flashtune.bench.synthetic --model TinyLlama-1.1B --out DIR --min 300 --max 1020
    python -m flashtune.bench.synthetic --model TinyLlama-1.1B --out DIR --min 1024 --max 1024
"""

import argparse
import json
import random
from pathlib import Path
from typing import List

from flashtune import data


def _sentences() -> List[str]:
    sentences = []
    for split in ("train", "valid"):
        _, rows = data.read_jsonl(data.default_dataset_dir() / f"{split}.jsonl")
        for _, record in rows:
            sentences += [m["content"] for m in record["messages"]]
    return sentences


def text_of_length(tokenizer, n_tokens: int, rng: random.Random, sentences: List[str]) -> str:
    """A text that the tokenizer encodes to exactly ``n_tokens`` tokens (EOS not counted)."""
    ids: List[int] = []
    while len(ids) < n_tokens + 8:
        ids += tokenizer.encode(" " + rng.choice(sentences), add_special_tokens=False)
    ids = ids[:n_tokens]
    for _ in range(8):  # decoding then encoding can merge across the cut: trim until exact
        text = tokenizer.decode(ids)
        count = len(tokenizer.encode(text, add_special_tokens=False))
        if count == n_tokens:
            return text
        ids = ids[: len(ids) - (count - n_tokens)] if count > n_tokens else ids + ids[: n_tokens - count]
    return tokenizer.decode(ids)


def write(tokenizer, out: Path, min_tokens: int, max_tokens: int, n_train: int = 400, n_valid: int = 16, seed: int = 0) -> Path:
    """Writes train.jsonl / valid.jsonl of {"text": ...} with token counts in [min, max]."""
    rng = random.Random(seed)
    sentences = _sentences()
    out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("valid", n_valid)):
        with open(out / f"{split}.jsonl", "w") as handle:
            for _ in range(count):
                n = rng.randint(min_tokens, max_tokens)
                handle.write(json.dumps({"text": text_of_length(tokenizer, n, rng, sentences)}) + "\n")
    (out / "README.md").write_text(
        f"Timing data: {n_train} train / {n_valid} valid texts of {min_tokens}-{max_tokens} tokens "
        f"(+EOS) for {getattr(tokenizer, 'name_or_path', 'the model')}'s tokenizer, seed {seed}, "
        "stitched from flashtune's capitals sentences by flashtune.bench.synthetic.\n"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="TinyLlama-1.1B")
    parser.add_argument("--tokenizer", help="tokenizer folder (see scripts/export_tokenizer.py)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--min", type=int, default=300)
    parser.add_argument("--max", type=int, default=1020)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import flashtune  # noqa: F401
    from flashtune import models

    _, tokenizer, _ = models.load_model(args.model, init="random", tokenizer=args.tokenizer)
    path = write(tokenizer, Path(args.out), args.min, args.max, args.n_train, seed=args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
