"""The training step: summed loss, gradients, the cross-rank reduction and the optimizer update.

The step is compiled once per distinct batch shape (as mlx-lm does), with the model's, the
optimizer's and the random generator's state as its implicit inputs and outputs.
"""

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from flashtune import data
from flashtune.patch import packed
from flashtune.train import chunked_loss


def loss_sum(model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array, chunk_tokens: int | None = None):
    """Summed token cross-entropy and token count; dividing by the global count after summing
    over micro-batches and ranks gives exactly the loss of the combined batch.

    Args:
        chunk_tokens: compute the loss ``chunk_tokens`` tokens at a time (flashtune.train.
            chunked_loss; see `chunked_loss.chunk_tokens_for`), or None: all logits at once.
    """
    if chunk_tokens:
        body, head, why = chunked_loss.split_model(model)
        if head is not None:
            return chunked_loss.cross_entropy_sum(body(inputs), targets, mask, head, chunk_tokens), mask.sum()
        chunked_loss.say_fallback(why)
    logits = model(inputs)
    # Fused on CUDA and Metal (one pass over the vocabulary, float32 accumulation).
    ce = mx.fast.cross_entropy(logits, targets) * mask
    return ce.astype(mx.float32).sum(), mask.sum()


@dataclass
class StepFunctions:
    """The (compiled) pieces of one optimizer update.

    ``full(batch)``: one micro-batch, the whole update. ``micro(batch)``: loss, token count and
    gradients of one micro-batch. ``update(grads, loss, tokens)``: sums over ranks, divides by the
    token count and applies the optimizer; returns (mean loss, tokens).
    """

    full: Callable
    micro: Callable
    update: Callable
    state: list  # what an evaluation of the step must force: model, optimizer, RNG state

    def run(self, parts: list[data.Batch]):
        """Dispatches one iteration over its micro-batches; returns lazy (loss, tokens)."""
        if len(parts) == 1:
            return self.full(*parts[0].arrays)
        grads, total, count = None, mx.array(0.0), mx.array(0.0)
        for part in parts:
            loss, tokens, g = self.micro(*part.arrays)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            total, count = total + loss, count + tokens
        return self.update(grads, total, count)


def make_steps(
    model: nn.Module, optimizer, world, world_size: int, compile: bool, loss_chunk_tokens: int | None = None
) -> StepFunctions:
    """Builds the step functions for ``model`` (compiled unless ``compile`` is False).

    ``loss_chunk_tokens``: as `loss_sum`'s ``chunk_tokens``.
    """

    def loss(model, inputs, targets, mask):
        return loss_sum(model, inputs, targets, mask, loss_chunk_tokens)

    value_and_grad = nn.value_and_grad(model, loss)
    state = [model.state, optimizer.state, mx.random.state]

    def update(grads, total_loss, total_tokens):
        if world_size > 1:
            grads = tree_map(lambda g: mx.distributed.all_sum(g, group=world), grads)
            total_loss = mx.distributed.all_sum(total_loss, group=world)
            total_tokens = mx.distributed.all_sum(total_tokens, group=world)
        optimizer.update(model, tree_map(lambda g: g / total_tokens, grads))
        return total_loss / total_tokens, total_tokens

    def micro(inputs, targets, mask, *segments):
        # Packed rows: the document ids must cover the backward too, which gradient
        # checkpointing builds by re-running each block's forward after the loss returns.
        with packed(model, segments[0]) if segments else nullcontext():
            (loss, tokens), grads = value_and_grad(model, inputs, targets, mask)
        return loss, tokens, grads

    def full(*batch):
        loss, tokens, grads = micro(*batch)
        return update(grads, loss, tokens)

    wrap = partial(mx.compile, inputs=state, outputs=state) if compile else (lambda f: f)
    return StepFunctions(wrap(full), wrap(micro), wrap(update), state)
