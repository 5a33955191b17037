"""Save an mlx-lm model as an HF-format folder (config.json, safetensors, tokenizer files)."""

import dataclasses
import os
from pathlib import Path
from typing import Any

import mlx.nn as nn


def quantization_of(model: nn.Module) -> dict[str, Any] | None:
    """mlx-lm's config["quantization"] entry describing a model's quantized layers, or None."""
    layers = {
        name: {"group_size": m.group_size, "bits": m.bits, "mode": getattr(m, "mode", "affine")}
        for name, m in model.named_modules()
        if hasattr(m, "bits") and hasattr(m, "scales")
    }
    if not layers:
        return None
    values = list(layers.values())
    common = max(values, key=values.count)
    out = dict(common)
    out.update({name: q for name, q in layers.items() if q != common})
    return out


def export_hf_folder(
    model: nn.Module,
    tokenizer,
    path: str | os.PathLike,
    config: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a model as an HF-format folder that mlx-lm (and `load_model`) can load.

    Args:
        model: an mlx-lm model (quantized layers are saved packed, with their quantization in
            config.json, as mlx-lm's convert does).
        tokenizer: its TokenizerWrapper or transformers tokenizer.
        path: the folder to write.
        config: the model's config (e.g. ``info.config``); None derives it from ``model.args``.
        overwrite: allow writing into a non-empty folder.

    Returns:
        The folder path.
    """
    from mlx_lm.utils import save_config, save_model

    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to write into it")
    if config is None:
        if not hasattr(model, "args"):
            raise ValueError("pass config=...: the model has no .args to derive config.json from")
        config = {k: v for k, v in dataclasses.asdict(model.args).items() if v is not None}
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    quantization = quantization_of(model)
    if quantization is not None:
        config["quantization"] = quantization
    save_model(path, model)
    save_config(config, path / "config.json")
    tokenizer.save_pretrained(str(path))
    return path
