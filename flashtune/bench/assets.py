"""What the fine-tuning bench runs on: model folders, tokenizers and timing data, made once.

For a model without cached real weights the bench writes an HF-style folder holding the shipped
config.json and a tokenizer, and both tools train it with architecture-exact random weights:
flashtune with ``--model FOLDER --init random`` (seeded, lazy), mlx_lm.lora from the same folder
once `export_weights` has saved those same weights into a copy of it. The folder's config raises
``max_position_embeddings`` to the longest sweep length: RoPE without scaling ignores it, so no
computation changes, and TinyLlama-1.1B (trained at 2048) can be timed at 4096.

The tokenizer is what ``flashtune.models.load_model(name, init="random")`` uses (the real one
when cached, else the stand-in cut from the embedded SmolLM2 vocabulary), else, where neither
exists, a word-level stand-in (`timing_data.write_word_tokenizer`). Token counts, not token
values, set the timing, and the data is fitted to the tokenizer either way.

``python scripts/make_timing_data.py --models TinyLlama-1.1B,Qwen2.5-1.5B --cache DIR`` writes
all of it (no weights) into DIR, small enough to carry to a machine without the embedded wheel.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from flashtune.bench import timing_data

VARIABLE = {"lo": 300, "hi": 1020, "n_train": 400, "n_valid": 32}  # as the anchors measured mlx_lm.lora


def slug(model: str) -> str:
    return model.lower().replace("/", "-")


@dataclass
class ModelSetup:
    """How both tools get one model: flashtune's --model/--init, mlx_lm's HF folder, the tokenizer."""

    name: str
    weights: str  # "pretrained" | "random-init"
    train_model: str  # flashtune train --model
    init: str  # flashtune train --init
    tokenizer_dir: Path | None  # where the tokenizer files are (None: the embedded GGUF)
    hf_folder: Path  # what mlx_lm lora --model gets
    tokenizer_note: str
    export: dict | None = None  # how to write hf_folder's weights when they are not there yet

    @property
    def label(self) -> str:
        return f"{self.name} (random-init weights)" if self.weights == "random-init" else self.name

    @property
    def embedded(self) -> bool:
        return self.weights == "pretrained" and self.export is not None


def _save_tokenizer(name: str, folder: Path) -> str:
    """Writes the tokenizer files into ``folder``; returns where they came from."""
    from flashtune import models

    try:
        _, tokenizer, info = models.load_model(name, init="random")  # weights stay lazy: nothing computed
        tokenizer._tokenizer.save_pretrained(str(folder))
        return info.tokenizer
    except models.ModelNotAvailableError:
        from flashtune.models import resolve
        from flashtune.models.random_init import shipped_config

        vocab = int(shipped_config(resolve(name).config_name)["vocab_size"])
        timing_data.write_word_tokenizer(folder, vocab)
        return f"word-level stand-in ({vocab} ids, one token per word; the model's tokenizer is not available here)"


def prepare_model(name: str, cache: Path, dtype: str, seed: int, max_length: int, random_init: bool = False,
                  exports: Path | None = None) -> ModelSetup:  # fmt: skip
    """Chooses real or random weights and writes the random-init folder (config + tokenizer).

    Args:
        name: a model alias (TinyLlama-1.1B, Qwen2.5-1.5B, SmolLM2-135M) or a local HF folder.
        cache: folder for models/, exports/ and data/.
        dtype: the training dtype ("bfloat16" on GPU, "float32" on CPU): exports are saved in it.
        seed: the random weights' seed (the same as flashtune train's --seed).
        max_length: the longest sequence any run will use.
        random_init: random weights even where real ones are available.
        exports: where mlx_lm's copies with weights go (default ``cache/exports``; GBs for the big models).
    """
    from flashtune import models
    from flashtune.models import hub
    from flashtune.models.random_init import shipped_config

    spec = models.resolve(name)
    exports = Path(exports) if exports else cache / "exports"
    if spec.source == "local" and not random_init:  # an HF folder both tools load as it is
        folder = Path(spec.path)
        return ModelSetup(name, "pretrained", str(folder), "pretrained", folder, folder, f"the model's own ({folder})")
    if spec.source == "embedded-gguf" and not random_init:
        return ModelSetup(name, "pretrained", name, "pretrained", None, exports / f"{name}-{dtype}", "the model's own (from its GGUF)",
                          export={"model": name, "init": "pretrained", "dtype": dtype, "seed": seed})  # fmt: skip
    snapshot = hub.cached_snapshot(spec.repo_id) if spec.repo_id and not random_init else None
    if snapshot is not None and any(snapshot.glob("*.safetensors")):
        return ModelSetup(name, "pretrained", name, "pretrained", snapshot, snapshot, f"the model's own ({snapshot})")
    if not spec.config_name:
        raise ValueError(f"{name}: no cached weights and no shipped config to build random weights from")
    folder = cache / "models" / f"{slug(name)}-random"
    config = shipped_config(spec.config_name)
    context = max_length + 1 if max_length else 0  # a fixed_length L run trains on L+1-token examples
    config["max_position_embeddings"] = max(config.get("max_position_embeddings") or 0, context)
    folder.mkdir(parents=True, exist_ok=True)
    note_file = folder / "flashtune-tokenizer.txt"
    if not note_file.is_file():  # written once; a folder carried from another machine keeps its tokenizer
        note_file.write_text(_save_tokenizer(name, folder))
    config_file = folder / "config.json"
    if not config_file.is_file() or json.loads(config_file.read_text()).get("max_position_embeddings", 0) < context:
        config_file.write_text(json.dumps(config, indent=1))
    return ModelSetup(name, "random-init", str(folder), "random", folder, exports / f"{slug(name)}-random-seed{seed}-{dtype}",
                      note_file.read_text().strip(), export={"model": str(folder), "init": "random", "dtype": dtype, "seed": seed})  # fmt: skip


def export_weights(setup: ModelSetup, log: Path, env: dict[str, str]) -> None:
    """Saves the model (the same weights flashtune trains) as mlx_lm's HF folder, in a subprocess."""
    if setup.export is None or (setup.hf_folder / "flashtune-export.json").is_file():
        return
    code = (
        "import json, sys; import flashtune; from flashtune import models; a = json.loads(sys.argv[1]); "
        "m, t, i = models.load_model(a['model'], init=a['init'], dtype=a['dtype'], seed=a['seed']); "
        "models.export_hf_folder(m, t, a['folder'], config=i.config, overwrite=True); "
        "open(a['folder'] + '/flashtune-export.json', 'w').write(json.dumps(dict(a, info=i.to_dict())))"
    )
    setup.hf_folder.mkdir(parents=True, exist_ok=True)
    args = json.dumps(dict(setup.export, folder=str(setup.hf_folder)))
    with open(log, "a") as handle:
        subprocess.run([sys.executable, "-c", code, args], check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)


def tokenizer_of(setup: ModelSetup):
    """The tokenizer both tools will use, loaded without the model."""
    if setup.tokenizer_dir is None:  # the embedded GGUF
        from flashtune.models import gguf

        return gguf.tokenizer_from_gguf(gguf.embedded_gguf_path())
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(Path(setup.tokenizer_dir))


def prepare_data(setup: ModelSetup, cache: Path, seed: int, length: int | None = None, batch: int = 1) -> Path:
    """Timing data for one model, written once: variable 300-1020 tokens, or fixed ``length + 1``."""
    root = cache / "data" / slug(setup.name)
    if length is None:
        folder = root / f"{setup.weights}-variable-{VARIABLE['lo']}-{VARIABLE['hi']}"
        timing_data.ensure_dataset(folder, tokenizer_of(setup), kind="variable", seed=seed, **VARIABLE)
    else:
        folder = root / f"{setup.weights}-fixed-{length}"
        timing_data.ensure_dataset(
            folder, tokenizer_of(setup), kind="fixed", length=length, n_train=max(4 * batch, 8), n_valid=0, seed=seed
        )
    return folder
