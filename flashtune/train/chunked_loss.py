"""Cross-entropy over chunks of tokens: the LM head, log-softmax and NLL never see all tokens at once.

The plain loss materializes (tokens x vocabulary) logits, their float32 softmax and gradient:
at 32,768 tokens Qwen2.5-1.5B's 151,936-word vocabulary makes 10 GB of bf16 logits alone. Here
a custom VJP runs the head's matmul and the softmax one chunk of tokens at a time, in the forward
(keeping each token's log-sum-exp, 4 bytes) and again in the backward (recomputing the chunk's
logits from the hidden states), so the loss holds a few chunks' logits, never all of them. MLX
would run independent chunks together; `mx.depends` chains them in order (it still allocates a
few chunks ahead of the computation: see CHUNK_BUDGET_BYTES).

The head module itself is called per chunk, so LoRA or quantization on it works, and gradients
reach its trainable parameters (and the embedding, when tied and trained) as well as the hidden
states. A head must be deterministic: the backward recomputes it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from flashtune.log import say_once
from flashtune.patch import SUPPORTED

# A chunk's float32 logits take at most this much. MLX allocates the outputs of ~100 operations
# ahead of the CPU's work, and so held about 8 chunks at once: SmolLM2-135M's head at 8192 tokens,
# forward and backward, took 1573 / 806 / 403 / 229 MiB with chunks of 1280 / 512 / 256 / 128
# tokens (`scripts/long_context_memory.py --loss-only`). 64 MiB gives chunks of 256 tokens for
# SmolLM2's vocabulary of 49,152, 512 for TinyLlama's 32,000 and 128 for Qwen2.5's 151,936.
CHUNK_BUDGET_BYTES = 64 * 2**20
CHUNK_MULTIPLE = 128  # chunk lengths are rounded down to a multiple of this (matmul-friendly)


def default_chunk_tokens(vocab_size: int, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Tokens per chunk whose float32 logits fit ``budget_bytes``, a multiple of CHUNK_MULTIPLE.

    Args:
        vocab_size: the head's output width.
        budget_bytes: the most a chunk's float32 logits may take.

    Returns:
        A positive chunk length (at least CHUNK_MULTIPLE).
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive; got {vocab_size}")
    tokens = budget_bytes // (4 * vocab_size)
    return max(CHUNK_MULTIPLE, tokens // CHUNK_MULTIPLE * CHUNK_MULTIPLE)


@dataclass
class Head:
    """How a model turns final hidden states into logits.

    Attributes:
        module: the module holding the head's parameters (``lm_head``, or ``embed_tokens`` when tied).
        fn: ``fn(hidden) -> logits``: the module's call, or ``embed_tokens.as_linear``.
        vocab_size: the logits' width.
    """

    module: nn.Module
    fn: Callable[[mx.array], mx.array]
    vocab_size: int


def _has_active_dropout(module: nn.Module) -> bool:
    return module.training and any(
        isinstance(m, nn.Dropout) and m._p_1 < 1.0
        for _, m in module.named_modules()  # _p_1 = 1 - p
    )


def split_model(model: nn.Module) -> tuple[Callable | None, Head | None, str]:
    """The model as (body, head): ``body(inputs) -> hidden``, ``head`` as above.

    Supported: the mlx-lm model files that flashtune.patch supports (``SUPPORTED``), whose
    ``Model`` is ``model.model`` (embeddings, blocks, final norm) followed by ``lm_head`` or, with
    ``args.tie_word_embeddings``, ``model.model.embed_tokens.as_linear``.

    Returns:
        (body, head, "") when supported, else (None, None, the reason).
    """
    modules = {arch.module for arch in SUPPORTED.values()}
    if type(model).__module__ not in modules or not isinstance(getattr(model, "model", None), nn.Module):
        return (
            None,
            None,
            f"{type(model).__module__}.{type(model).__name__} is not one of the mlx-lm model files {sorted(modules)}",
        )
    args = getattr(model, "args", None)
    if getattr(args, "tie_word_embeddings", False):
        embed = model.model.embed_tokens
        head = Head(embed, embed.as_linear, int(args.vocab_size))
    elif isinstance(getattr(model, "lm_head", None), nn.Module):
        head = Head(model.lm_head, model.lm_head, int(args.vocab_size))
    else:
        return None, None, f"{type(model).__name__} has neither lm_head nor tied embeddings"
    if _has_active_dropout(head.module):
        return None, None, "its LM head has dropout (the backward recomputes the head, which must be deterministic)"
    return model.model, head, ""


def _blocks(length: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(chunk, length - start)) for start in range(0, length, chunk)]


def _with_params(head: Head, names: list[str], params: list[mx.array], hidden: mx.array) -> mx.array:
    """The head's logits with its trainable parameters set to ``params`` (restored afterwards)."""
    if not names:
        return head.fn(hidden)
    saved = head.module.trainable_parameters()
    head.module.update(tree_unflatten(list(zip(names, params))))
    try:
        return head.fn(hidden)
    finally:
        head.module.update(saved)


def _forward(head: Head, names, chunk, hidden, targets, mask, params):
    """Summed masked loss (float32 scalar) and each token's log-sum-exp (N,) float32."""
    losses, lses = [], []
    for start, n in _blocks(hidden.shape[0], chunk):
        h = hidden[start : start + n]
        if losses:  # one chunk's logits at a time (see the module docstring)
            h = mx.depends(h, [losses[-1], lses[-1]])
        t = targets[start : start + n]
        logits = _with_params(head, names, params, h)  # (n, V)
        ce = mx.fast.cross_entropy(logits, t)  # fused on GPUs: one pass, float32 accumulation
        picked = mx.take_along_axis(logits, t[:, None], axis=-1)[:, 0].astype(mx.float32)
        lses.append(ce + picked)  # ce = lse - picked: the log-sum-exp without a second pass
        losses.append((ce * mask[start : start + n]).astype(mx.float32).sum())
    return mx.sum(mx.stack(losses)), mx.concatenate(lses)


@mx.compile
def _d_logits(logits: mx.array, lse: mx.array, targets: mx.array, weight: mx.array) -> mx.array:
    """(softmax - one_hot(targets)) * weight per row, in the logits' dtype.

    Compiled so that the chunk's float32 softmax, one-hot and product are one fused pass that
    writes one (n, V) array (uncompiled each is an (n, V) temporary of its own).
    """
    probs = mx.exp(logits.astype(mx.float32) - lse[:, None])
    one_hot = mx.arange(logits.shape[-1])[None] == targets[:, None]
    return ((probs - one_hot) * weight[:, None]).astype(logits.dtype)


def _backward(head: Head, names, chunk, hidden, targets, mask, params, lse, d_loss):
    """d hidden (N, D) and d params (list): per chunk, logits recomputed, softmax minus one-hot."""
    d_hidden: list[mx.array] = []
    d_params: list[mx.array] | None = None
    for start, n in _blocks(hidden.shape[0], chunk):
        h = hidden[start : start + n]
        if d_hidden:
            h = mx.depends(h, [d_hidden[-1], *(d_params or [])])
        t = targets[start : start + n]
        logits = _with_params(head, names, params, h)  # (n, V)
        weight = (d_loss * mask[start : start + n]).astype(mx.float32)
        d_logits = _d_logits(logits, lse[start : start + n], t, weight)
        _, grads = mx.vjp(lambda h, *p: _with_params(head, names, list(p), h), [h, *params], [d_logits])
        d_hidden.append(grads[0])
        d_params = grads[1:] if d_params is None else [a + b for a, b in zip(d_params, grads[1:])]
    return mx.concatenate(d_hidden), d_params or []


def cross_entropy_sum(hidden: mx.array, targets: mx.array, mask: mx.array, head: Head, chunk_tokens: int) -> mx.array:
    """Summed masked token cross-entropy of ``head(hidden)``, computed ``chunk_tokens`` at a time.

    Equal to ``(mx.fast.cross_entropy(head.fn(hidden), targets) * mask).sum()`` up to float32
    rounding, differentiable in ``hidden`` and the head's trainable parameters.

    Args:
        hidden: (B, L, D) final hidden states.
        targets: (B, L) int token ids. mask: (B, L), 0 where a token has no loss.
        head: the model's head (`split_model`).
        chunk_tokens: tokens per chunk (of the B*L flattened tokens).

    Returns:
        A float32 scalar.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive; got {chunk_tokens}")
    if targets.shape != hidden.shape[:-1] or mask.shape != targets.shape:
        raise ValueError(f"hidden {hidden.shape}, targets {targets.shape} and mask {mask.shape} do not match")
    flat = tree_flatten(head.module.trainable_parameters())
    names, params = [k for k, _ in flat], [v for _, v in flat]

    @mx.custom_function
    def loss(hidden, targets, mask, params):
        return _forward(head, names, chunk_tokens, hidden, targets, mask, params)

    @loss.vjp
    def loss_vjp(primals, cotangents, outputs):
        hidden, targets, mask, params = primals
        d_hidden, d_params = _backward(
            head, names, chunk_tokens, hidden, targets, mask, params, outputs[1], cotangents[0]
        )
        return d_hidden, mx.zeros_like(targets), mx.zeros_like(mask), d_params

    D = hidden.shape[-1]
    return loss(hidden.reshape(-1, D), targets.reshape(-1), mask.reshape(-1), params)[0]  # (B*L, D)


def say_fallback(reason: str) -> None:
    """Says once per process that the plain loss is used, and why."""
    say_once(f"chunked-loss:{reason}", f"chunked loss: {reason}; using the plain loss (all logits at once)")


def chunk_tokens_for(model: nn.Module, enabled: bool, chunk_tokens: int | None = None) -> int | None:
    """The loss chunk length for ``model`` (`flashtune.train.step.loss_sum`'s ``chunk_tokens``).

    Args:
        enabled: the ``chunked_loss`` setting.
        chunk_tokens: the ``loss_chunk_tokens`` setting (None: `default_chunk_tokens`).

    Returns:
        Tokens per chunk, or None for the plain loss: when disabled, or for a model that
        `split_model` does not support (said once).
    """
    if not enabled:
        return None
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"loss_chunk_tokens must be positive; got {chunk_tokens}")
    _, head, why = split_model(model)
    if head is None:
        say_fallback(why)
        return None
    return chunk_tokens or default_chunk_tokens(head.vocab_size)
