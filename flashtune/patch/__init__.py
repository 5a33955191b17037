"""Swap the attention of mlx-lm Llama and Qwen2 model instances: patch, unpatch, patched, and
run packed sequences through a patched model: packed.

How: each supported attention module *instance* gets its ``__class__`` set to a flashtune
subclass of its own class (made once per original class, then cached). The subclass's
``__call__`` does mlx-lm's projections, RoPE and KV-cache update, then calls the attention
function stored on the instance as a plain attribute. Unpatching sets ``__class__`` back and
deletes that attribute, so the instance is exactly what it was.

Why this way:
- The parameter tree is untouched (no wrapper modules), so LoRA adapters trained on a patched
  model keep mlx-lm's names (``model.layers.0.self_attn.q_proj.lora_a``) and load unpatched.
- Nothing global changes: mlx-lm's classes and its model files' own imported copies of
  ``scaled_dot_product_attention`` are never touched, and other instances stay unpatched.
- LoRA layers applied before or after patching are picked up, because the patched forward
  calls ``self.q_proj`` etc. like the original does.

Packed sequences: mlx-lm's ``Model.__call__`` takes no document ids, so ``packed(model, ids)``
stores them on every patched attention instance for the duration of a ``with`` block (like
the attention function) and the patched forward passes them on as ``segments=``. Under
``mx.compile`` the ids given to ``packed`` are whatever array the compiled function holds,
an input when they are one of its arguments, so nothing is frozen into the compiled graph.

This package is also the runner, ``python -m flashtune.patch`` (see ``flashtune.patch.runner``).
It is a package, not a module, because ``flashtune/__init__.py`` imports it: running an
already-imported plain module with ``-m`` makes Python warn and execute it a second time.
"""

import contextlib
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from flashtune import attention
from flashtune.log import logger, say_once

__all__ = ["SUPPORTED", "Arch", "patch", "unpatch", "patched", "packed", "patch_info"]

AttentionFn = Callable[..., mx.array]
_ATTN_ATTR = "_flashtune_attn"  # instance attribute holding the attention function
_SEGMENTS_ATTR = "_flashtune_segments"  # instance attribute: document ids inside `packed`
_ORIGINAL_ATTR = "_flashtune_original"  # class attribute of a patched subclass
FUSED_QKV_ATTR = "_flashtune_fused_qkv"  # instance attribute: q/k/v in one (flashtune.fused_projections)


def llama_forward(self, x: mx.array, mask, cache, attn: AttentionFn) -> mx.array:
    """mlx-lm's Llama attention forward (qwen2's is the same; its biases live in the Linears).

    Mirrors ``mlx_lm.models.llama.Attention.__call__`` (mlx-lm 0.32) except for the call to
    ``attn`` where mlx-lm calls its module-level ``scaled_dot_product_attention``, and the
    q/k/v projections, computed as one where the trainer fused them. ``attn`` already carries
    any document ids (see ``packed``).
    """
    B, L, _ = x.shape
    fused = self.__dict__.get(FUSED_QKV_ATTR)
    queries, keys, values = fused(x) if fused is not None else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
    queries = queries.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)  # (B, H, L, D)
    keys = keys.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)  # (B, Hkv, L, D)
    values = values.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)  # (B, Hkv, L, D)
    if cache is not None:
        queries = self.rope(queries, offset=cache.offset)
        keys = self.rope(keys, offset=cache.offset)
        keys, values = cache.update_and_fetch(keys, values)
    else:
        queries = self.rope(queries)
        keys = self.rope(keys)
    output = attn(queries, keys, values, scale=self.scale, mask=mask)
    output = output.transpose(0, 2, 1, 3).reshape(B, L, -1)  # (B, L, n_heads * head_dim)
    return self.o_proj(output)


@dataclass(frozen=True)
class Arch:
    """One supported mlx-lm architecture: where its attention class lives and how it runs.

    Attributes:
        module: the mlx-lm model file, e.g. ``"mlx_lm.models.llama"``.
        forward: ``forward(attention_module, x, mask, cache, attn) -> out``, mlx-lm's forward
            with ``attn`` in place of ``scaled_dot_product_attention``.
        attention_class: name of the attention class in ``module``.
        model_class: name of the top-level model class (the runner hooks its construction).
    """

    module: str
    forward: Callable = llama_forward
    attention_class: str = "Attention"
    model_class: str = "Model"


# Keys are mlx-lm architecture names (the model file); config model types that mlx-lm remaps
# to these files (e.g. "mistral" -> llama) are covered too. Adding a model type is one entry.
SUPPORTED: dict[str, Arch] = {
    "llama": Arch("mlx_lm.models.llama"),
    "qwen2": Arch("mlx_lm.models.qwen2"),
}

_patched_classes: dict[type, type] = {}  # original attention class -> its flashtune subclass


def _patched_class(original: type, arch: Arch) -> type:
    """Returns the flashtune subclass of ``original``, creating it on first use."""
    cls = _patched_classes.get(original)
    if cls is not None:
        return cls

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        attn = getattr(self, _ATTN_ATTR)
        segments = self.__dict__.get(_SEGMENTS_ATTR)
        if segments is not None:
            if cache is not None:
                raise ValueError(
                    f"packed sequences (segment ids of shape {tuple(segments.shape)}) are for "
                    f"training and full-sequence passes; a KV cache ({type(cache).__name__}) "
                    f"was given: call the model outside `packed` to generate"
                )
            attn = functools.partial(attn, segments=segments)
        # mlx-lm runs quantized KV caches through its own quantized matmuls; keep its path.
        if hasattr(cache, "bits"):
            say_once(
                f"patch-fallback:{original.__module__}:{type(cache).__name__}",
                f"patched attention: {type(cache).__name__} (quantized KV cache) runs "
                f"mlx-lm's own attention, not {_name_of(getattr(self, _ATTN_ATTR))!r}",
                level=logging.DEBUG,
            )
            return original.__call__(self, x, mask, cache)
        return arch.forward(self, x, mask, cache, attn)

    cls = type(
        f"Patched{original.__name__}",
        (original,),
        {"__call__": __call__, "__module__": __name__, _ORIGINAL_ATTR: original},
    )
    _patched_classes[original] = cls
    return cls


def _name_of(fn: AttentionFn) -> str:
    return getattr(fn, "attention_name", None) or getattr(fn, "__qualname__", repr(fn))


def _resolve(attn: str | AttentionFn) -> AttentionFn:
    """Turns a registry name or a callable into an attention function, checking it."""
    if isinstance(attn, str):
        return attention.get(attn)  # KeyError listing the valid names
    if not callable(attn):
        raise TypeError(
            f"attn must be a registry name ({', '.join(attention.names())}) or a callable "
            f"fn(q, k, v, *, scale, mask=None); got {type(attn).__name__}"
        )
    refusal = _refusal(attn, scale=1.0, mask=None)
    if refusal:
        raise TypeError(f"attention callable {_name_of(attn)!r} must accept (q, k, v, *, scale, mask=None); {refusal}")
    return attn


def _refusal(fn: AttentionFn, **keywords) -> str | None:
    """Why ``fn(q, k, v, **keywords)`` cannot be called, or None (also when it has no
    signature to ask, as some builtins and mx.custom_function)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(None, None, None, **keywords)
    except TypeError as e:
        return f"its signature is {signature}: {e}"
    return None


def _attention_classes() -> dict[type, Arch]:
    """Supported attention classes of the mlx-lm model files imported so far.

    A model file that was never imported cannot have made a model, so nothing is imported
    here (keeps ``import flashtune`` from pulling in mlx-lm).
    """
    classes = {}
    for arch in SUPPORTED.values():
        module = sys.modules.get(arch.module)
        if module is not None:
            classes[getattr(module, arch.attention_class)] = arch
    return classes


def _original_class(module: nn.Module) -> type:
    return getattr(type(module), _ORIGINAL_ATTR, type(module))


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, Arch]]:
    """(path, module, arch) of every supported attention block in ``model``."""
    classes = _attention_classes()
    found = []
    for path, module in model.named_modules():
        arch = classes.get(_original_class(module))
        if arch is not None:
            found.append((path, module, arch))
    # Model order (layers.2 before layers.10), not named_modules' traversal order.
    return sorted(found, key=lambda found: _path_key(found[0]))


def _path_key(path: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.split(".")]


def _model_type(model) -> str:
    for get in (lambda: model.model_type, lambda: model.args.model_type):
        try:
            if isinstance(value := get(), str):
                return value
        except AttributeError:
            pass
    return type(model).__name__


def patch(model: nn.Module, attn: str | AttentionFn) -> nn.Module:
    """Makes every supported attention block of ``model`` use ``attn``.

    Patching a patched model replaces the attention function (never stacks); the instance
    is changed in place and its parameter tree is untouched.

    Args:
        model: an mlx-lm model instance of a type in ``SUPPORTED`` (llama, qwen2), with or
            without LoRA layers.
        attn: a registry name (``flashtune.attention.names()``) or a callable with the
            attention signature ``fn(q, k, v, *, scale, mask=None)`` (and ``segments=None``
            to run inside ``packed``).

    Returns:
        ``model`` itself.

    Raises:
        KeyError: ``attn`` is not a registered name (the message lists the names).
        TypeError: ``model`` is not an ``nn.Module``, or ``attn`` is neither a name nor a
            callable of that signature.
        ValueError: ``model`` has no supported attention block (names its type and the
            supported ones).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch expects an mlx-lm model (nn.Module); got {type(model).__name__}")
    fn = _resolve(attn)
    blocks = _attention_modules(model)
    if not blocks:
        raise ValueError(
            f"flashtune.patch does not support model type {_model_type(model)!r} "
            f"({type(model).__module__}.{type(model).__qualname__}); supported mlx-lm model "
            f"types: {', '.join(SUPPORTED)}"
        )
    for _, module, arch in blocks:
        module.__class__ = _patched_class(_original_class(module), arch)
        # object.__setattr__: nn.Module would file a Module-valued callable as a child.
        object.__setattr__(module, _ATTN_ATTR, fn)
    logger.debug("patched %d attention blocks with %r", len(blocks), _name_of(fn))
    return model


def _unpatch_module(module: nn.Module) -> None:
    module.__class__ = _original_class(module)
    module.__dict__.pop(_ATTN_ATTR, None)
    module.__dict__.pop(_SEGMENTS_ATTR, None)


def unpatch(model: nn.Module) -> nn.Module:
    """Restores every patched attention block of ``model`` to mlx-lm's own.

    The blocks get back their original class and lose the flashtune attribute, so their
    outputs are bit-identical to never-patched ones. Unpatched models are returned unchanged.

    Args:
        model: a model given to ``patch`` (or any model).

    Returns:
        ``model`` itself.
    """
    for _, module, _ in _attention_modules(model):
        _unpatch_module(module)
    return model


@contextlib.contextmanager
def patched(model: nn.Module, attn: str | AttentionFn) -> Iterator[nn.Module]:
    """Context-manager form of ``patch``; on exit each block is as it was on entry.

    Args:
        model: as for ``patch``.
        attn: as for ``patch``.

    Yields:
        ``model``, patched.
    """
    before = [(m, m.__dict__.get(_ATTN_ATTR)) for _, m, _ in _attention_modules(model)]
    patch(model, attn)
    try:
        yield model
    finally:
        for module, previous in before:
            if previous is None:
                _unpatch_module(module)
            else:
                object.__setattr__(module, _ATTN_ATTR, previous)


@contextlib.contextmanager
def packed(model: nn.Module, segments: mx.array) -> Iterator[nn.Module]:
    """Runs a patched model on packed sequences for the duration of a ``with`` block.

    ``with packed(model, segments): logits = model(inputs)``: every patched attention block
    passes ``segments`` to its attention function, so a token attends only to earlier tokens
    of its own document and padding slots to nothing (``flashtune.attention.contract``).
    RoPE needs no change: within a document the scores depend only on relative positions.

    For training, enclose the whole gradient call, ``with packed(model, ids): loss, grads =
    loss_and_grad(model, ...)``, not just the forward inside the loss function: MLX builds
    the backward after the loss function returns, and with gradient checkpointing
    (``mx.checkpoint``) it re-runs each block's forward then, which must see the ids too
    (outside the block it would run unpacked and the gradients would be wrong). Inside
    ``mx.compile``, pass the ids as an argument of the compiled function and enter
    ``packed`` inside it: they are then an input, not a constant.

    Args:
        model: a model patched with ``patch`` (every supported block).
        segments: int32 (B, L) document ids of the tokens the model is called with, a
            negative id for a padding slot.

    Yields:
        ``model``.

    Raises:
        ValueError: ``model`` has an unpatched (or no) supported attention block, its
            attention function takes no ``segments``, or ``segments`` is not an int32
            (B, L) array. Calling the model with a KV cache inside the block also raises.
    """
    blocks = [m for _, m, _ in _attention_modules(model)]
    if not blocks or any(_ATTN_ATTR not in m.__dict__ for m in blocks):
        raise ValueError(
            f"packed sequences need a patched model: call flashtune.patch(model, attn) "
            f"first ({_model_type(model)!r} has {len(blocks)} supported attention blocks, "
            f"{sum(_ATTN_ATTR in m.__dict__ for m in blocks)} patched)"
        )
    if not isinstance(segments, mx.array) or segments.ndim != 2 or segments.dtype != mx.int32:
        described = (
            f"{segments.dtype} {tuple(segments.shape)}" if isinstance(segments, mx.array) else type(segments).__name__
        )
        raise ValueError(f"segments must be an int32 (B, L) array; got {described}")
    for fn in {id(m.__dict__[_ATTN_ATTR]): m.__dict__[_ATTN_ATTR] for m in blocks}.values():
        refusal = _refusal(fn, scale=1.0, mask=None, segments=None)
        if refusal:
            raise ValueError(f"attention {_name_of(fn)!r} takes no segments; {refusal}")
    before = [(m, m.__dict__.get(_SEGMENTS_ATTR)) for m in blocks]
    for module in blocks:
        object.__setattr__(module, _SEGMENTS_ATTR, segments)
    try:
        yield model
    finally:
        for module, previous in before:
            if previous is None:
                module.__dict__.pop(_SEGMENTS_ATTR, None)
            else:
                object.__setattr__(module, _SEGMENTS_ATTR, previous)


def patch_info(model: nn.Module) -> dict[str, object] | None:
    """Says what ``model`` is patched with, or None when no block is patched.

    Returns:
        ``{"attn": name or list of names, "blocks": [module paths], "model_type": str}``.
    """
    blocks = [(p, m) for p, m, _ in _attention_modules(model) if _ATTN_ATTR in m.__dict__]
    if not blocks:
        return None
    names = list(dict.fromkeys(_name_of(m.__dict__[_ATTN_ATTR]) for _, m in blocks))
    return {
        "attn": names[0] if len(names) == 1 else names,
        "blocks": [p for p, _ in blocks],
        "model_type": _model_type(model),
    }
