"""LoRA layers (mlx-lm's own, so adapters load back into mlx-lm) and per-instance gradient checkpointing."""

from typing import Any, Dict

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

_CHECKPOINTED = {}  # original block class -> its checkpointing subclass


def adapter_config(num_layers: int, rank: int, scale: float, dropout: float) -> Dict[str, Any]:
    """The adapter_config.json mlx-lm reads (mlx_lm.generate --adapter-path, mlx_lm.fuse)."""
    return {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": dropout},
    }


def apply_lora(model: nn.Module, config: Dict[str, Any]) -> int:
    """Freezes the model and adds LoRA to every linear layer of the last ``num_layers`` blocks.

    Returns:
        The number of trainable parameters.
    """
    n_blocks = len(model.layers)
    if not 0 < config["num_layers"] <= n_blocks:
        raise ValueError(
            f"lora_layers={config['num_layers']} but the model has {n_blocks} blocks; "
            f"choose 1..{n_blocks}"
        )
    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"])
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def _checkpointing_class(original: type) -> type:
    if original not in _CHECKPOINTED:

        def __call__(self, *args, **kwargs):
            def inner(params, *args, **kwargs):
                self.update(params)
                return original.__call__(self, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        _CHECKPOINTED[original] = type(original.__name__, (original,), {"__call__": __call__})
    return _CHECKPOINTED[original]


def enable_grad_checkpoint(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass, for this model's blocks only.

    mlx-lm does this by replacing the block class's ``__call__`` for every model in the process;
    here each block instance gets a subclass instead, so other models are unaffected.
    """
    for block in model.layers:
        block.__class__ = _checkpointing_class(type(block))
