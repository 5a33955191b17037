"""flashtune.models: aliases, errors, random init, local/Hub folders, the embedded SmolLM2."""

import json

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm import generate
from mlx_lm.utils import load as mlx_lm_load

from flashtune import models  # first: flashtune sets up the CPU BLAS before mlx loads

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # "The capital of France is" in SmolLM2's vocabulary


def _write_hf_folder(path, seed=1):
    """A tiny HF-format folder written with plain MLX/transformers calls, not flashtune's export."""
    model = models.random_init.random_model(TINY_CONFIG, mx.float32, seed=seed)
    weights = dict(tree_flatten(model.parameters()))
    path.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(TINY_CONFIG))
    tokenizer = models.gguf.tokenizer_from_gguf(models.gguf.embedded_gguf_path(), vocab_size=512)
    tokenizer._tokenizer.save_pretrained(str(path))
    return model


def _logits(model, ids):
    out = model(mx.array(ids)[None])
    mx.eval(out)
    return out


@pytest.fixture(scope="module")
def embedded():
    return models.load_model("SmolLM2-135M", dtype="float32")


# -- names -------------------------------------------------------------------------------------


def test_aliases_resolve_without_loading():
    assert models.resolve("TinyLlama-1.1B").repo_id == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert models.resolve("Qwen2.5-1.5B").repo_id == "Qwen/Qwen2.5-1.5B"
    assert models.resolve("Qwen2.5-1.5B-Instruct").repo_id == "Qwen/Qwen2.5-1.5B-Instruct"
    assert models.resolve("SmolLM2-135M").source == "embedded-gguf"
    assert models.resolve(None).name == models.DEFAULT_MODEL
    spec = models.resolve("some-org/some-model")
    assert (spec.source, spec.repo_id) == ("hub", "some-org/some-model")


@pytest.mark.parametrize("name", ["tinyllama", "Llama-9000", "a/b/c", "bad repo/x"])
def test_unknown_model_lists_aliases(name):
    with pytest.raises(models.UnknownModelError) as err:
        models.resolve(name)
    assert isinstance(err.value, ValueError)
    assert repr(name) in str(err.value)
    for alias in models.ALIASES:
        assert alias in str(err.value)


def test_missing_or_wrong_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.resolve(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.resolve(str(tmp_path))  # exists, but is no model folder


def test_dtype_names():
    assert models.resolve_dtype("bf16") == mx.bfloat16
    assert models.resolve_dtype(mx.float16) == mx.float16
    assert models.resolve_dtype(None) == mx.float32  # this CPU
    with pytest.raises(ValueError, match="float64x"):
        models.resolve_dtype("float64x")
    with pytest.raises(ValueError, match="init"):
        models.load_model("TinyLlama-1.1B", init="zeros")


# -- random init -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, n_params, model_type, context",
    [
        ("TinyLlama-1.1B", 1_100_048_384, "llama", 2048),
        ("Qwen2.5-1.5B", 1_543_714_304, "qwen2", 131072),
        ("Qwen2.5-1.5B-Instruct", 1_543_714_304, "qwen2", 32768),
    ],
)
def test_random_init_exact_parameter_counts(name, n_params, model_type, context):
    # Weights stay lazy: counting reads shapes only, so nothing of 1.1B floats is allocated.
    before = mx.get_active_memory()
    model, tokenizer, info = models.load_model(name, init="random", dtype="bfloat16")
    assert mx.get_active_memory() - before < 64 * 2**20
    assert info.n_params == n_params == models.count_parameters(model)
    assert (info.model_type, info.max_position_embeddings) == (model_type, context)
    assert info.random_init and info.source == "random-init"
    assert "random" in info.label and "random" in info.note
    assert info.to_dict()["random_init"] is True and "config" not in info.to_dict()
    ids = tokenizer.encode("What is the capital of France? 12345")
    assert max(ids) < info.config["vocab_size"]


def test_random_init_is_seeded(tmp_path):
    _write_hf_folder(tmp_path / "tiny")
    a, _, info = models.load_model(str(tmp_path / "tiny"), init="random", seed=3)
    b, _, _ = models.load_model(str(tmp_path / "tiny"), init="random", seed=3)
    c, _, _ = models.load_model(str(tmp_path / "tiny"), init="random", seed=4)
    ids = [5, 6, 7, 8]
    assert mx.array_equal(_logits(a, ids), _logits(b, ids))
    assert not mx.array_equal(_logits(a, ids), _logits(c, ids))
    assert info.random_init and info.dtype == "float32"


# -- local folders and the Hub code path ------------------------------------------------------


def test_local_hf_folder_loads_through_mlx_lm(tmp_path):
    reference = _write_hf_folder(tmp_path / "tiny")
    model, tokenizer, info = models.load_model(str(tmp_path / "tiny"))
    assert (info.source, info.random_init, info.model_type) == ("local", False, "llama")
    assert info.n_params == models.count_parameters(reference)
    ids = tokenizer.encode("Hello world")
    assert mx.allclose(_logits(model, ids), _logits(reference, ids), atol=1e-5)


def _fake_hub_cache(cache, repo_id):
    """Lay a folder out the way huggingface_hub caches a download."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return _write_hf_folder(repo_dir / "snapshots" / commit)


def test_hub_repo_from_cache_offline(tmp_path, monkeypatch):
    reference = _fake_hub_cache(tmp_path, "flashtune-test/tiny-llama")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _, info = models.load_model("flashtune-test/tiny-llama")
    assert (info.source, info.repo_id) == ("hub", "flashtune-test/tiny-llama")
    assert mx.allclose(_logits(model, [3, 4, 5]), _logits(reference, [3, 4, 5]), atol=1e-5)
    rows = {r["alias"]: r for r in models.list_models()}
    assert rows["flashtune-test/tiny-llama"]["status"] == "cached"


@pytest.mark.parametrize("offline", ["1", None])
def test_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # empty: nothing cached
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.load_model("TinyLlama-1.1B")
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for expected in ("'TinyLlama-1.1B'", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "init='random'", "SmolLM2-135M"):
        assert expected in message


# -- the embedded SmolLM2-135M-Instruct --------------------------------------------------------


def test_embedded_config_matches_published(embedded):
    _, _, info = embedded
    published = models.random_init.shipped_config("SmolLM2-135M-Instruct")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
                "rope_theta", "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id"):  # fmt: skip
        assert info.config[key] == published[key], key
    assert info.n_params == 134_515_008
    assert (info.source, info.random_init, info.quantized) == ("embedded-gguf", False, False)


def test_embedded_tokenizer(embedded):
    _, tokenizer, _ = embedded
    assert tokenizer.encode("The capital of France is") == PROMPT_IDS
    assert tokenizer.encode("x 2024") == tokenizer.encode("x 2024", add_special_tokens=False)
    assert [tokenizer.decode([i]) for i in tokenizer.encode("2024")] == ["2", "0", "2", "4"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.eos_token_ids == {2}


def test_embedded_answers_a_plain_question(embedded):
    model, tokenizer, _ = embedded
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    answer = generate(model, tokenizer, prompt, max_tokens=10)  # greedy by default
    assert "Paris" in answer, answer


def test_embedded_quantized_matches_dequantized(embedded, tmp_path):
    dense, _, _ = embedded
    quant, tokenizer, info = models.load_model("SmolLM2-135M", quantized=True, dtype="float32")
    assert info.quantized and info.n_params == 134_515_008
    assert quant.model.layers[0].self_attn.q_proj.bits == 4
    assert quant.model.embed_tokens.bits == 8
    a, b = _logits(quant, PROMPT_IDS), _logits(dense, PROMPT_IDS)
    error = mx.abs(a - b).max().item()
    assert error < 1e-3 * mx.abs(b).max().item(), f"max abs logit error {error}"
    assert mx.array_equal(a.argmax(-1), b.argmax(-1))
    # exported packed (QLoRA-ready) and loaded back through the local-folder path
    models.export_hf_folder(quant, tokenizer, tmp_path / "q4", config=info.config)
    again, _, again_info = models.load_model(str(tmp_path / "q4"))
    assert again_info.quantized and again.model.embed_tokens.bits == 8
    assert mx.array_equal(_logits(again, PROMPT_IDS), a)


def test_embedded_exports_an_hf_folder_mlx_lm_loads(embedded, tmp_path):
    model, tokenizer, info = embedded
    path = models.export_hf_folder(model, tokenizer, tmp_path / "smol", config=info.config)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    with pytest.raises(FileExistsError):
        models.export_hf_folder(model, tokenizer, path)
    loaded, loaded_tokenizer = mlx_lm_load(str(path))
    assert loaded_tokenizer.encode("The capital of France is") == PROMPT_IDS
    assert mx.allclose(_logits(loaded, PROMPT_IDS), _logits(model, PROMPT_IDS), atol=1e-4)


def test_models_table_lists_aliases_and_sizes():
    rows = models.list_models()
    by_alias = {r["alias"]: r for r in rows}
    assert set(models.ALIASES) <= set(by_alias)
    assert by_alias["TinyLlama-1.1B"]["params"] == 1_100_048_384
    assert by_alias["SmolLM2-135M"]["status"].startswith("embedded")
    assert by_alias["SmolLM2-135M"]["size_bytes"] > 90e6
    table = models.format_models_table(rows)
    assert "1,543,714,304" in table and "random" in table
