"""Architecture-exact models with random weights, built from config.json files the package ships.

Timing does not depend on weight values, so TinyLlama-1.1B and Qwen2.5-1.5B can be timed with
no download. Weights follow HF's initialization (normal(0, initializer_range) for matrices and
embeddings, ones for norms, zeros for biases) from one seed. MLX arrays are lazy: building the
model allocates nothing until the weights are first evaluated, so parameter counts are free.
"""

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

CONFIG_DIR = Path(__file__).parent / "configs"


def shipped_config(config_name: str) -> dict[str, Any]:
    """Read one of the config.json files shipped in flashtune/models/configs.

    Args:
        config_name: the file stem, e.g. ``TinyLlama-1.1B-Chat-v1.0``.

    Returns:
        The config dict (the model's published config.json values).
    """
    path = CONFIG_DIR / f"{config_name}.json"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise FileNotFoundError(f"no shipped config {config_name!r}; shipped: {names}")
    return json.loads(path.read_text())


def model_classes(config: dict[str, Any]):
    """The mlx-lm (Model, ModelArgs) classes for a config, as mlx-lm's loader picks them."""
    from mlx_lm.utils import _get_classes

    return _get_classes(config)


def build_model(config: dict[str, Any]) -> nn.Module:
    """Instantiate the mlx-lm model for ``config`` with lazy (unevaluated) default weights."""
    model_class, args_class = model_classes(config)
    return model_class(args_class.from_dict(config))


def random_model(config: dict[str, Any], dtype: mx.Dtype, seed: int = 0) -> nn.Module:
    """Build the mlx-lm model for ``config`` with HF-style random weights, still lazy.

    Args:
        config: an HF config.json dict.
        dtype: dtype of every parameter.
        seed: the random seed; the same seed gives the same weights.

    Returns:
        The model; its weights are computed when first evaluated.
    """
    model = build_model(config)
    std = float(config.get("initializer_range", 0.02))
    params = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    new = []
    for i, (name, p) in enumerate(params):
        if name.endswith("bias"):
            value = mx.zeros(p.shape, dtype=dtype)
        elif p.ndim == 1:  # RMSNorm scales
            value = mx.ones(p.shape, dtype=dtype)
        else:
            value = mx.random.normal(p.shape, dtype=dtype, scale=std, key=keys[i])
        new.append((name, value))
    model.update(tree_unflatten(new))
    model.eval()
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (quantized weights counted unpacked), from shapes alone: nothing is evaluated."""
    from mlx_lm.utils import get_total_parameters

    return int(get_total_parameters(model))
