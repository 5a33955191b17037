"""The one source of training defaults. The CLI flags and the YAML keys are generated from it.

Precedence: command-line flags > the YAML recipe (``--config``) > the defaults below.
Unknown YAML keys are an error, and so are values of the wrong type.
"""

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from flashtune.errors import ConfigError

# Recipes shipped with the package: `--config NAME` finds recipes/NAME.yaml here.
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
LORA_PRECISIONS = ("mixed", "float32")  # see flashtune.train.lora.set_lora_precision
FINE_TUNE_TYPES = ("lora", "dora", "full")  # mlx_lm lora's --fine-tune-type, same meanings


@dataclass
class TrainConfig:
    # What to train.
    model: str = field(default="SmolLM2-135M", metadata={"help": "alias, HF repo id or local folder"})
    init: str = field(
        default="pretrained",
        metadata={"help": "pretrained | random (architecture-exact timing runs)", "choices": ["pretrained", "random"]},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "with --init random: tokenizer folder to use (default: cached, else a stand-in)"},
    )
    attn: str = field(default="demo", metadata={"help": "attention implementation (flashtune attention names)"})
    data: str | None = field(
        default=None, metadata={"help": "folder with train.jsonl/valid.jsonl (default: the shipped dataset)"}
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "parameter dtype (default: bfloat16 on GPU, float32 on CPU)",
            "choices": ["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"],
        },
    )
    qlora: bool = field(default=False, metadata={"help": "keep quantized base weights quantized (QLoRA)"})
    # What trains: LoRA/DoRA adapters or every weight of the last blocks.
    fine_tune_type: str = field(
        default="lora",
        metadata={
            "help": "lora | dora (LoRA plus a learned magnitude per output row) | full (every weight of the last --lora-layers blocks); as mlx_lm lora's",
            "choices": list(FINE_TUNE_TYPES),
        },
    )
    lora_layers: int = field(
        default=16,
        metadata={
            "help": "number of final blocks fine-tuned: they get LoRA/DoRA, or with full train all their weights (mlx_lm's --num-layers)",
            "min": 1,
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank", "min": 1})
    lora_scale: float = field(default=20.0, metadata={"help": "LoRA scale (mlx-lm's convention)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout", "min": 0.0, "below": 1.0})
    lora_precision: str = field(
        default="mixed",
        metadata={
            "help": "LoRA/DoRA branch compute: mixed (activations' dtype, float32 parameters) | float32 (mlx-lm's layers); not used by full",
            "choices": list(LORA_PRECISIONS),
        },
    )
    # Optimization.
    iters: int = field(default=100, metadata={"help": "training iterations", "min": 1})
    batch_size: int = field(default=4, metadata={"help": "sequences per iteration (per rank)", "min": 1})
    grad_accumulation: int = field(default=1, metadata={"help": "micro-batches per optimizer update", "min": 1})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)", "above": 0.0})
    warmup: int = field(default=10, metadata={"help": "linear warm-up iterations", "min": 0})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to learning_rate * this", "min": 0.0})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay", "min": 0.0})
    max_seq_length: int | None = field(
        default=None,
        metadata={
            "help": "most tokens per example (default: the model context); longer is an error unless --truncate",
            "min": 2,
        },
    )
    truncate: bool = field(default=False, metadata={"help": "truncate over-long examples instead of failing"})
    pad_to_multiple: int | None = field(
        default=None,
        metadata={
            "help": "pad batch length to a multiple (default: lengths planned per run for few compiles, see flashtune.data.shapes)",
            "min": 1,
        },
    )
    pack: bool = field(
        default=False,
        metadata={
            "help": "pack several examples into each row, kept apart by per-document attention (flashtune.data.packing)"
        },
    )
    pack_length: int | None = field(
        default=None,
        metadata={
            "help": "with --pack: tokens per packed row (default: the longest example, rounded up to the device's length granularity)",
            "min": 1,
        },
    )
    fixed_length: int | None = field(
        default=None, metadata={"help": "pad every batch to this length (one compiled shape; timing runs)", "min": 1}
    )
    grad_checkpoint: bool = field(
        default=False, metadata={"help": "recompute block activations in the backward (less memory)"}
    )
    chunked_loss: bool = field(
        default=True,
        metadata={
            "help": "compute the loss over chunks of tokens, recomputing each chunk's logits in the backward: one chunk's logits in memory instead of every token's (flashtune.train.chunked_loss)"
        },
    )
    loss_chunk_tokens: int | None = field(
        default=None,
        metadata={
            "help": "tokens per loss chunk (default: from the vocabulary size, a chunk's float32 logits within 64 MiB)",
            "min": 1,
        },
    )
    compile: bool = field(default=True, metadata={"help": "compile the training step (mx.compile)"})
    fuse_projections: bool = field(
        default=True,
        metadata={
            "help": "compute each LoRA'd block's q/k/v and gate/up as one matmul + one LoRA branch each (same math and adapters; fewer kernels per step); LoRA and DoRA, not full"
        },
    )
    pipeline: bool = field(
        default=True,
        metadata={
            "help": "on GPUs, dispatch each step before waiting for the previous one, so the host's work overlaps the device's (costs memory: two steps in flight)"
        },
    )
    mask_prompt: bool = field(default=True, metadata={"help": "no loss on prompt tokens (completions/chat data)"})
    seed: int = field(default=0, metadata={"help": "random seed (data order, LoRA init, dropout)"})
    # Evaluation, checkpoints, output.
    steps_per_eval: int = field(
        default=25, metadata={"help": "validation every N iterations (0: only at the end)", "min": 0}
    )
    val_batches: int = field(default=8, metadata={"help": "validation batches per evaluation (-1: all)", "min": -1})
    steps_per_save: int = field(default=50, metadata={"help": "checkpoint every N iterations", "min": 0})
    out: str | None = field(default=None, metadata={"help": "run folder (default: runs/<model>-<attn>)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its last checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing run in --out"})
    sample: bool = field(default=True, metadata={"help": "show answers to held-out prompts before and after training"})
    sample_tokens: int = field(default=48, metadata={"help": "tokens per sample answer", "min": 1})
    records: str | None = field(default=None, metadata={"help": "per-iteration JSONL (default: <out>/records.jsonl)"})
    distributed: bool = field(
        default=False, metadata={"help": "data-parallel over mx.distributed (implied under mlx.launch)"}
    )

    def __post_init__(self):
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), f.metadata)
        if self.qlora and self.fine_tune_type == "full":
            raise ConfigError(
                "--qlora keeps the base weights quantized and frozen, so it trains adapters only: "
                "use --fine-tune-type lora or dora with it, or full without --qlora"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_value(name: str, value: Any, rules: dict[str, Any]) -> None:
    """Raises ConfigError when ``value`` is outside the field's choices or bounds (None is unset)."""
    if value is None:
        return
    flag = "--" + name.replace("_", "-")
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{flag} {value!r} is not one of {', '.join(map(str, choices))}")
    if "min" in rules and value < rules["min"]:
        raise ConfigError(f"{flag} {value!r} is too small; it must be at least {rules['min']}")
    if "above" in rules and not value > rules["above"]:
        raise ConfigError(f"{flag} {value!r} must be greater than {rules['above']}")
    if "below" in rules and not value < rules["below"]:
        raise ConfigError(f"{flag} {value!r} must be less than {rules['below']}")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_type(name: str, value: Any, hint: Any) -> Any:
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = base[0]
    if value is None and type(None) in typing.get_args(hint):
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def shipped_recipes() -> list[str]:
    """Names of the recipes that ship with flashtune (``--config NAME``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def find_recipe(name_or_path) -> Path:
    """A recipe file: the path as given, else a shipped recipe of that name (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"recipe {name_or_path} does not exist; shipped recipes: {', '.join(shipped_recipes())}")


def load_yaml(path: Path) -> dict[str, Any]:
    """Reads a recipe (a file, or a shipped recipe's name): a mapping of TrainConfig keys;
    unknown keys and wrong types are errors."""
    path = find_recipe(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of settings, got {type(data).__name__}")
    hints = _field_types()
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"recipe {path}: unknown keys {unknown}; valid keys: {', '.join(hints)}")
    return {k: _check_type(f"{path}: {k}", v, hints[k]) for k, v in data.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per TrainConfig field (defaults stay in the dataclass: flags default to unset)."""
    parser.add_argument(
        "--config", help="YAML recipe file, or a shipped recipe's name (keys are the long flag names with _)"
    )
    hints = _field_types()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        kind = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        if kind[0] is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                type=kind[0],
                default=argparse.SUPPRESS,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def resolve(args: argparse.Namespace | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the recipe named by ``args.config``, then flags, then ``overrides``."""
    values: dict[str, Any] = {}
    given = dict(vars(args)) if args is not None else {}
    recipe = given.pop("config", None)
    if recipe:
        values.update(load_yaml(Path(recipe)))
    names = {f.name for f in fields(TrainConfig)}
    values.update({k: v for k, v in given.items() if k in names})
    values.update(overrides)
    return TrainConfig(**values)


def recipe_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def options_table() -> str:
    """Every training option as a Markdown table (flag, YAML key, default, meaning), for the docs."""
    rows = ["| flag | YAML key | default | meaning |", "|---|---|---|---|"]
    for f in fields(TrainConfig):
        meaning = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{f.name}` | `{f.default}` | {meaning} |")
    return "\n".join(rows)
