"""Fused LoRA projections: a block's q/k/v (and gate/up) as one frozen matmul plus one LoRA branch.

Why: on a GPU a LoRA training step of a 1-1.5B model at batch 4 x <=1024 tokens is bound by the
host launching ~1,900 kernels, not by the GPU (H100, TinyLlama-1.1B: a step at 1/8 of the tokens
took 58 of the full step's 63 ms; `scripts/profile_step.py`). Three LoRA'd projections of the
same input cost three base matmuls, three low-rank branches, three adds, and as many again in the
backward; fused they cost one of each.

How, without changing anything a user or mlx-lm sees:
- The parameter tree is untouched: ``q_proj``, ``k_proj``, ``v_proj`` stay mlx-lm LoRALinear
  modules with their own ``lora_a``/``lora_b``, so adapters, optimizer state and checkpoints
  keep mlx-lm's names and resume across fused and unfused runs.
- The frozen base weights are concatenated once, and each projection's ``linear.weight`` (and
  bias) becomes a row slice of the concatenation: a view of the same memory, same values.
- Each step the LoRA parameters are concatenated (tiny: A is in x n*rank) and the B matrices
  placed on a block diagonal by a constant mask, so the branch is ``(x @ A_cat) @ B_diag`` and
  the off-diagonal gradient is exactly zero.
- The patched attention forward (flashtune.patch.llama_forward) and the MLP (its class swapped
  per instance, as the patcher does for attention) call the fused projections when present.

DoRA groups fuse too: DoRA scales each output row by its magnitude over the norm of that row
of the adapted weight, and each row of the concatenation is a row of exactly one member, so the
fused output is scaled by the members' concatenated ``m / norm``. The norms come from the
concatenated A and block-diagonal B (flashtune.train.dora.adapted_row_norms), whose off-diagonal
zeros contribute exact zeros: the same computation, bias added after the scaling as in DoRA.

Fused only where it is the same computation: plain (not quantized) Linear bases, LoRA or DoRA
in flashtune's mixed precision (all members the same kind), no dropout (mlx-lm draws
independent dropout per projection), one scale per group. Other groups keep their separate
projections.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu

from flashtune.patch import FUSED_QKV_ATTR as QKV_ATTR  # on attention modules: FusedProjections of q/k/v
from flashtune.train.dora import SQUARE_NORMS_ATTR, MixedPrecisionDoRALinear, adapted_row_norms
from flashtune.train.lora import MixedPrecisionLoRALinear

GATE_UP_ATTR = "_flashtune_fused_gate_up"  # on MLP modules: FusedProjections of gate/up
_ORIGINAL_ATTR = "_flashtune_original_mlp"  # class attribute of a fused-MLP subclass
_GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj"), QKV_ATTR), ("mlp", ("gate_proj", "up_proj"), GATE_UP_ATTR))
_fused_mlp_classes: dict[type, type] = {}


class FusedProjections:
    """The outputs of several LoRA'd projections of one input, computed as one.

    A plain object (not an nn.Module), so it adds nothing to the parameter tree; it reads the
    members' LoRA parameters at call time, so it follows training and checkpoint loads.
    """

    def __init__(self, members: list[nn.Module]):
        self.members = members
        self.dora = isinstance(members[0], MixedPrecisionDoRALinear)
        linears = [m.linear for m in members]
        self.weight = mx.concatenate([linear.weight for linear in linears], axis=0)
        self.bias = mx.concatenate([linear.bias for linear in linears]) if "bias" in linears[0] else None
        mx.eval(self.weight, self.bias)
        sizes = [linear.weight.shape[0] for linear in linears]
        self.splits = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        starts = [0] + self.splits
        for linear, start, size in zip(linears, starts, sizes):  # views of the concatenation
            linear.weight = self.weight[start : start + size]
            if self.bias is not None:
                linear.bias = self.bias[start : start + size]
        mx.eval([linear.parameters() for linear in linears])
        # mask[i, j] = 1 where output column j belongs to projection i.
        column = mx.arange(sum(sizes))
        self.mask = mx.stack([(column >= s) & (column < s + n) for s, n in zip(starts, sizes)]).astype(
            self.weight.dtype
        )
        mx.eval(self.mask)  # a constant: left lazy, every step would rebuild it (10 kernels)
        self.scale = members[0].scale
        if self.dora:
            self.square_norms = mx.concatenate([getattr(m, SQUARE_NORMS_ATTR) for m in members])
            mx.eval(self.square_norms)

    def _block_diagonal(self, lora_b: mx.array) -> mx.array:
        """(r, width) side-by-side B matrices -> (n * r, width), member i's rows in its columns."""
        n, width = self.mask.shape
        rank = lora_b.shape[0]
        return (lora_b[None] * self.mask[:, None, :]).reshape(n * rank, width)  # (n * r, width)

    def __call__(self, x: mx.array) -> list[mx.array]:
        if self.dora:
            return self._dora(x)
        lora_a = mx.concatenate([m.lora_a for m in self.members], axis=1).astype(x.dtype)
        lora_b = (self.scale * mx.concatenate([m.lora_b for m in self.members], axis=1)).astype(x.dtype)
        y = x @ self.weight.T if self.bias is None else mx.addmm(self.bias, x, self.weight.T)
        y = y + (x @ lora_a) @ self._block_diagonal(lora_b)
        return mx.split(y, self.splits, axis=-1)

    def _dora(self, x: mx.array) -> list[mx.array]:
        """The members' MixedPrecisionDoRALinear outputs: the LoRA sum scaled per row, then the bias."""
        lora_a = mx.concatenate([m.lora_a for m in self.members], axis=1)  # (in, n * r), float32
        # float32 (the mask's 0/1 in the weight dtype promote to it): the norms need it unrounded.
        lora_b = self._block_diagonal(self.scale * mx.concatenate([m.lora_b for m in self.members], axis=1))
        weight_a = lora_a.T.astype(self.weight.dtype) @ self.weight.T  # (n * r, width)
        norms = adapted_row_norms(self.square_norms, weight_a, lora_a, lora_b)
        magnitude = (mx.concatenate([m.m for m in self.members]) / norms).astype(x.dtype)
        y = x @ self.weight.T + (x @ lora_a.astype(x.dtype)) @ lora_b.astype(x.dtype)
        y = magnitude * y
        return mx.split(y if self.bias is None else y + self.bias, self.splits, axis=-1)


def _fusable(members: list[nn.Module]) -> bool:
    return (
        len({type(m) for m in members}) == 1
        and type(members[0]) in (MixedPrecisionLoRALinear, MixedPrecisionDoRALinear)
        and all(type(m.linear) is nn.Linear for m in members)
        # nn.Dropout keeps 1 - p as _p_1 (no public p); 1.0 means no dropout.
        and all(isinstance(m.dropout, nn.Dropout) and m.dropout._p_1 == 1.0 for m in members)
        and len({m.scale for m in members}) == 1
        and len({m.lora_a.shape[1] for m in members}) == 1
        and len({("bias" in m.linear) for m in members}) == 1
    )


def _fused_mlp_class(original: type) -> type:
    cls = _fused_mlp_classes.get(original)
    if cls is None:

        def __call__(self, x: mx.array) -> mx.array:
            gate, up = getattr(self, GATE_UP_ATTR)(x)
            return self.down_proj(swiglu(gate, up))  # mlx-lm's Llama/Qwen2 MLP

        cls = type(
            f"Fused{original.__name__}",
            (original,),
            {"__call__": __call__, "__module__": __name__, _ORIGINAL_ATTR: original},
        )
        _fused_mlp_classes[original] = cls
    return cls


def fuse_projections(model: nn.Module) -> int:
    """Fuses q/k/v and gate/up of every block of ``model`` where that is the same computation.

    Attention modules must be patched (flashtune.patch) for their q/k/v fusion to be used; the
    MLPs use theirs right away. Returns the number of fused groups.
    """
    count = 0
    for block in model.layers:
        for owner_name, names, attr in _GROUPS:
            owner = getattr(block, owner_name, None)
            members = [getattr(owner, n, None) for n in names]
            if owner is None or attr in owner.__dict__ or not _fusable(members):
                continue
            object.__setattr__(owner, attr, FusedProjections(members))
            if attr == GATE_UP_ATTR:
                owner.__class__ = _fused_mlp_class(type(owner))
            count += 1
    return count


def unfuse_projections(model: nn.Module) -> None:
    """Back to separate projections (same parameter values; the base weights stay views)."""
    for block in model.layers:
        for owner_name, _, attr in _GROUPS:
            owner = getattr(block, owner_name, None)
            if owner is not None and owner.__dict__.pop(attr, None) is not None and attr == GATE_UP_ATTR:
                owner.__class__ = getattr(type(owner), _ORIGINAL_ATTR)
