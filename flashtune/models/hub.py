"""Hugging Face Hub and local HF-format folders: download (or find in the cache) and load with mlx-lm.

Loading goes through `mlx_lm.utils.load`, the function mlx-lm's own CLI uses: weights only from
`model*.safetensors` (never pickle), no remote code. The Hub is reached through
`huggingface_hub.snapshot_download`; when it cannot be reached and the model is not cached, the
error names the model and the ways forward.
"""

import os
from pathlib import Path
from typing import Any

import mlx.nn as nn

from flashtune.errors import ModelNotAvailableError

# What mlx-lm's loader reads; nothing else is downloaded.
ALLOW_PATTERNS = [
    "*.json",
    "model*.safetensors",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
]


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read from the environment at call time."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE")
    if flag is not None:
        return flag.upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of a cached repo (with a config.json), or None; never uses the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=hub_cache_dir(),
                local_files_only=True,
                allow_patterns=ALLOW_PATTERNS,
            )
        )
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError):
        return None
    return path if (path / "config.json").is_file() else None


def download(repo_id: str, name: str, revision: str | None = None) -> Path:
    """Return a local snapshot of ``repo_id``: from the cache if complete, else from the Hub.

    Args:
        repo_id: the Hub repository, e.g. ``TinyLlama/TinyLlama-1.1B-Chat-v1.0``.
        name: what the user asked for (an alias or the repo id), used in error messages.
        revision: branch, tag or commit; None for the default branch.

    Returns:
        The snapshot folder (config.json, safetensors, tokenizer files).

    Raises:
        ModelNotAvailableError: the Hub is unreachable (or offline mode is on) and the model
            is not cached, or the repository does not exist / is gated.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cached = cached_snapshot(repo_id, revision)
    if cached is not None and any(cached.glob("model*.safetensors")):
        return cached
    cache = hub_cache_dir()
    if _offline():
        raise ModelNotAvailableError(_not_available(name, repo_id, cache, "HF_HUB_OFFLINE is set"))
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            endpoint=endpoint,
            allow_patterns=ALLOW_PATTERNS,
        )
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
        raise ModelNotAvailableError(
            f"model {name!r}: the Hugging Face Hub has no accessible repository {repo_id!r}"
            f"{' at revision ' + repr(revision) if revision else ''} ({type(e).__name__}). "
            "Check the spelling, or log in (`hf auth login`) if the repository is gated or private."
        ) from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotAvailableError(_not_available(name, repo_id, cache, reason)) from e
    return Path(path)


def _not_available(name: str, repo_id: str, cache: Path, reason: str) -> str:
    return (
        f"model {name!r} ({repo_id}) is not in the local Hugging Face cache ({cache}) and the Hub "
        f"could not be reached: {reason}. To go on, either: download it once where there is "
        f"network (`hf download {repo_id}`, then copy the cache or set HF_HUB_CACHE); pass a local "
        "HF-format folder (config.json, model*.safetensors, tokenizer files) as the model; use "
        "init='random' (`--init random`) for architecture-exact random weights, which is enough "
        "for timing; or use the embedded 'SmolLM2-135M', which needs no network."
    )


def load_folder(path: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Load an HF-format folder with mlx-lm, lazily (the caller casts, then evaluates).

    Args:
        path: folder with config.json, model*.safetensors and tokenizer files.

    Returns:
        (model, TokenizerWrapper, config dict).
    """
    from mlx_lm.utils import load

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not an HF-format model folder: config.json is missing "
            "(expected config.json, model*.safetensors and tokenizer files)"
        )
    if not any(path.glob("model*.safetensors")):
        raise FileNotFoundError(
            f"{path} has no model*.safetensors weights (flashtune loads safetensors only, never "
            "pickled .bin files; convert them with `python -m mlx_lm convert`)"
        )
    # mlx_lm.utils.load only calls snapshot_download for paths that do not exist.
    model, tokenizer, config = load(str(path), lazy=True, return_config=True)
    return model, tokenizer, config


def folder_size(path: Path) -> int:
    """Bytes of the files in a folder (symlinks into the hub's blob store followed)."""
    total = 0
    for p in Path(path).rglob("*"):
        if p.is_file():
            total += p.stat().st_size
    return total
