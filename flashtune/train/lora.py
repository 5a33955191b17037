"""LoRA layers (mlx-lm's own, so adapters load back into mlx-lm), their compute precision, and
per-instance gradient checkpointing."""

from typing import Any, Dict

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from flashtune.config import LORA_PRECISIONS

_CHECKPOINTED = {}  # original block class -> its checkpointing subclass


def _check_precision(precision: str) -> None:
    if precision not in LORA_PRECISIONS:
        raise ValueError(f"lora_precision={precision!r}; choose one of {', '.join(LORA_PRECISIONS)}")


def adapter_config(num_layers: int, rank: int, scale: float, dropout: float) -> Dict[str, Any]:
    """The adapter_config.json mlx-lm reads (mlx_lm.generate --adapter-path, mlx_lm.fuse)."""
    return {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": dropout},
    }


def apply_lora(model: nn.Module, config: Dict[str, Any], precision: str = "mixed") -> int:
    """Freezes the model and adds LoRA to every linear layer of the last ``num_layers`` blocks.

    Args:
        precision: how the LoRA branches compute (see `set_lora_precision`).

    Returns:
        The number of trainable parameters.
    """
    n_blocks = len(model.layers)
    if not 0 < config["num_layers"] <= n_blocks:
        raise ValueError(
            f"lora_layers={config['num_layers']} but the model has {n_blocks} blocks; "
            f"choose 1..{n_blocks}"
        )
    _check_precision(precision)
    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"])
    set_lora_precision(model, precision)
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


class MixedPrecisionLoRALinear(LoRALinear):
    """mlx-lm's LoRALinear with its low-rank branch computed in the activations' dtype.

    mlx-lm keeps ``lora_a``/``lora_b`` in float32 and multiplies bf16 activations by them, which
    promotes the whole branch to float32: every LoRA'd linear writes (and differentiates) an
    extra float32 tensor of its full output size. Here the float32 parameters are cast to the
    activations' dtype (the matmuls still accumulate in float32) and the scale is folded into
    the small ``lora_b``, so the branch costs a bf16 output and one fused add. Parameters,
    their names and dtypes, and saved adapters are unchanged. For float32 models it is the
    same computation.
    """

    def __call__(self, x):
        lora_a = self.lora_a.astype(x.dtype)
        lora_b = (self.scale * self.lora_b).astype(x.dtype)
        return self.linear(x) + (self.dropout(x) @ lora_a) @ lora_b


def set_lora_precision(model: nn.Module, precision: str) -> int:
    """Chooses how every LoRALinear of ``model`` computes its branch, per instance.

    Args:
        precision: "mixed" (activations' dtype, float32 parameters) or "float32" (mlx-lm's own).

    Returns:
        How many layers were set.
    """
    _check_precision(precision)
    target = MixedPrecisionLoRALinear if precision == "mixed" else LoRALinear
    count = 0
    for _, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.__class__ = target
            count += 1
    return count


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
