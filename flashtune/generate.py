"""Greedy answers from a (fine-tuned) model: held-out prompts before and after training, and `flashtune generate`."""

from pathlib import Path

import mlx.nn as nn
from mlx_lm.generate import generate as mlx_generate

from flashtune import data


def prompt_tokens(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The chat-templated prompt (with the assistant turn opened) as token ids."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return tokenizer.encode("\n".join(m["content"] for m in messages))


def held_out_prompts(data_dir: str | None, count: int = 2) -> list[list[dict[str, str]]]:
    """The first ``count`` prompts of valid.jsonl (chat messages before the last assistant turn)."""
    root = data.default_dataset_dir() if data_dir is None else Path(data_dir)
    valid = root / "valid.jsonl" if root.is_dir() else None
    if valid is None or not valid.is_file():
        return []
    fmt, rows = data.read_jsonl(valid)
    prompts = []
    for _, record in rows[:count]:
        if fmt == "completions":
            prompts.append([{"role": "user", "content": record["prompt"]}])
        elif fmt == "chat":
            messages = record["messages"]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompts.append(messages[:last])
    return prompts


def answer(model: nn.Module, tokenizer, messages: list[dict[str, str]], max_tokens: int = 48) -> str:
    """Greedy decoding of one reply."""
    was_training = model.training
    model.eval()
    try:
        text = mlx_generate(model, tokenizer, prompt_tokens(tokenizer, messages), max_tokens=max_tokens, verbose=False)
    finally:
        model.train(was_training)
    return text.strip()
