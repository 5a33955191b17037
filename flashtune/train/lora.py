"""What trains: LoRA and DoRA layers (mlx-lm's own, so adapters load back into mlx-lm) or every
weight of the last blocks (full fine-tuning); the adapters' compute precision; per-instance
gradient checkpointing."""

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from flashtune.config import LORA_PRECISIONS
from flashtune.train.dora import MixedPrecisionDoRALinear

_CHECKPOINTED = {}  # original block class -> its checkpointing subclass


def _check_precision(precision: str) -> None:
    if precision not in LORA_PRECISIONS:
        raise ValueError(f"lora_precision={precision!r}; choose one of {', '.join(LORA_PRECISIONS)}")


def _check_num_layers(model: nn.Module, num_layers: int) -> None:
    n_blocks = len(model.layers)
    if not 0 < num_layers <= n_blocks:
        raise ValueError(f"lora_layers={num_layers} but the model has {n_blocks} blocks; choose 1..{n_blocks}")


def _count_trainable(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def adapter_config(
    num_layers: int, rank: int, scale: float, dropout: float, fine_tune_type: str = "lora"
) -> dict[str, Any]:
    """The adapter_config.json mlx-lm reads (mlx_lm.generate --adapter-path, mlx_lm.fuse).

    Full fine-tuning has no LoRA parameters; mlx-lm writes them as null then, and so does this.
    """
    lora = None if fine_tune_type == "full" else {"rank": rank, "scale": scale, "dropout": dropout}
    return {"fine_tune_type": fine_tune_type, "num_layers": num_layers, "lora_parameters": lora}


def apply_lora(model: nn.Module, config: dict[str, Any], precision: str = "mixed") -> int:
    """Freezes the model and adds LoRA (or DoRA) to every linear layer of the last ``num_layers`` blocks.

    Args:
        config: an `adapter_config` of type "lora" or "dora".
        precision: how the branches compute (see `set_lora_precision`).

    Returns:
        The number of trainable parameters.
    """
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise ValueError(f"apply_lora adds lora or dora adapters, not {kind!r} (full: use train_last_blocks)")
    _check_num_layers(model, config["num_layers"])
    _check_precision(precision)
    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"], use_dora=kind == "dora")
    set_lora_precision(model, precision)
    return _count_trainable(model)


def train_last_blocks(model: nn.Module, num_layers: int) -> int:
    """Full fine-tuning as mlx-lm does it: freezes the model, then unfreezes every parameter of
    the last ``num_layers`` blocks (embedding, final norm and LM head stay frozen).

    Returns:
        The number of trainable parameters.

    Raises:
        ValueError: a block to train holds quantized layers (their packed weights cannot train).
    """
    _check_num_layers(model, num_layers)
    blocks = model.layers[-num_layers:]
    quantized = sorted(
        {
            type(m).__name__
            for b in blocks
            for _, m in b.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        }
    )
    if quantized:
        raise ValueError(
            f"full fine-tuning trains every weight of the last {num_layers} blocks, but they hold quantized "
            f"layers ({', '.join(quantized)}); use an unquantized model, or --fine-tune-type lora or dora"
        )
    model.freeze()
    for block in blocks:
        block.unfreeze()
    return _count_trainable(model)


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
    """Chooses how every LoRA and DoRA layer of ``model`` computes its branch, per instance.

    Args:
        precision: "mixed" (activations' dtype, float32 parameters: MixedPrecisionLoRALinear,
            MixedPrecisionDoRALinear) or "float32" (mlx-lm's LoRALinear, DoRALinear).

    Returns:
        How many layers were set.
    """
    _check_precision(precision)
    mixed = precision == "mixed"
    count = 0
    for _, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.__class__ = MixedPrecisionLoRALinear if mixed else LoRALinear
        elif isinstance(module, DoRALinear):
            if mixed:
                MixedPrecisionDoRALinear.adopt(module)
            else:
                module.__class__ = DoRALinear
        else:
            continue
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
