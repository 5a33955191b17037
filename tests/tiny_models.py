"""Tiny mlx-lm models, HF-format model folders and datasets for tests (random weights, offline).

Import as ``from tests.tiny_models import tiny_model, write_tiny_hf_model, ...`` (pytest runs
from the repository root). Nothing here downloads anything.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

import flashtune  # noqa: F401  (loads the optimized BLAS before mlx)
from flashtune.bench.timing_data import save_tokenizer_folder

# Small enough to run in milliseconds, big enough for GQA (4 query / 2 KV heads, head_dim 16).
TINY_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 128,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}

TINY_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a small model learns to attend to the right tokens",
    "flash attention computes softmax in blocks with an online rescale",
    "low rank adapters train a few parameters on top of frozen weights",
    "the dog sleeps while the fox runs through the quiet forest",
    "keys and values are cached so generation reads each token once",
    "grouped query attention shares one key head among several query heads",
    "the lazy fox and the quick dog are friends in this tiny story",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def tiny_config(model_type: str = "llama", **overrides) -> dict:
    """HF-style config dict of a tiny model (also what ``config.json`` holds)."""
    return {"model_type": model_type, **TINY_CONFIG, **overrides}


def model_module(model_type: str):
    """The mlx-lm model file for ``model_type`` (``mlx_lm.models.<model_type>``)."""
    import importlib

    return importlib.import_module(f"mlx_lm.models.{model_type}")


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides) -> nn.Module:
    """A tiny float32 mlx-lm model with random weights, in eval mode, weights evaluated.

    Args:
        model_type: an mlx-lm model file name, e.g. ``"llama"`` or ``"qwen2"``.
        seed: seeds ``mx.random`` so equal seeds give equal weights.
        overrides: config values replacing ``TINY_CONFIG``'s.
    """
    arch = model_module(model_type)
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(tiny_config(model_type, **overrides)))
    model.eval()
    mx.eval(model.parameters())
    return model


def write_tiny_tokenizer(path: Path, texts: Sequence[str] = TINY_TEXTS, vocab_size: int = 128) -> Path:
    """Writes a word-level ``tokenizer.json`` + ``tokenizer_config.json`` trained on ``texts``.

    ``transformers.AutoTokenizer`` (and so ``mlx_lm.load``) reads the folder offline.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(list(texts), trainer)
    return save_tokenizer_folder(tokenizer, path, pad_token="<pad>", model_max_length=512)


def write_tiny_hf_model(path: Path, model_type: str = "llama", seed: int = 0, **overrides) -> Path:
    """Writes an HF-format folder (config, safetensors weights, tokenizer) ``mlx_lm.load`` reads.

    Returns:
        ``path``.
    """
    from mlx_lm.utils import save_config, save_model

    path = Path(path)
    model = tiny_model(model_type, seed=seed, **overrides)
    save_model(path, model)
    config = tiny_config(model_type, **overrides)
    config.update(bos_token_id=1, eos_token_id=2)
    save_config(config, path / "config.json")
    write_tiny_tokenizer(path, vocab_size=config["vocab_size"])
    return path


def write_text_dataset(path: Path, texts: Sequence[str] = TINY_TEXTS) -> Path:
    """Writes ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl`` of ``{"text": ...}`` lines."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lines: list[str] = [json.dumps({"text": t}) for t in texts]
    for split in ("train", "valid", "test"):
        (path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return path


def train_config(tiny: tuple[Path, Path], out: Path, **overrides):
    """A resolved `flashtune train` config on a tiny model folder and dataset (``tiny``: the
    ``tiny`` fixture's pair): 30 iterations of batch 2, LoRA on both blocks, ``practical``
    attention, a validation and a checkpoint every 10; ``overrides`` replace any setting."""
    from flashtune import config as config_module

    model_dir, data_dir = tiny
    settings = dict(
        model=str(model_dir),
        data=str(data_dir),
        out=str(out),
        iters=30,
        batch_size=2,
        lora_layers=2,
        learning_rate=1e-3,
        warmup=3,
        steps_per_eval=10,
        val_batches=2,
        steps_per_save=10,
        sample=False,
        attn="practical",
    )
    settings.update(overrides)
    return config_module.resolve(None, **settings)
