"""The fine-tuning comparison's ``packing`` suite: one pass over the same examples, packed and padded.

Per model and dataset, each run trains one pass (one epoch) over the same training examples with
the same LoRA, AdamW and learning rate per token, from ``recipes/packing-<model>.yaml``:

- flashtune packed (``flashtune train --pack``: rows of ``pack_length`` slots holding several
  examples, kept apart by per-document attention), for each implementation of ``--pack-impls``;
- flashtune padded (length-sorted batches padded to planned lengths, as every other run), the same
  implementations;
- ``mlx_lm lora``, padded its own way (``mlx_lm.lora`` in ``--pack-impls``);
- the first implementation padded again with other seeds (data order, LoRA init, dropout),
  ``--pack-spread-runs`` times (variants ``padded-seed1``...): the run-to-run spread of padded
  training, the yardstick of the packed runs' validation loss.

The pass: the bench tokenizes the dataset as ``flashtune train`` does and counts the steps of one
epoch, padded (`flashtune.data.num_batches`) and packed (`flashtune.data.packing.packed_batches`),
both with the recipe's batch size (rows per step). mlx_lm lora gets the padded pass's iterations.
``pack_length`` is the trainer's default, the longest example rounded up to this device's length
granularity (2048 on the chat-like set), passed explicitly so the run packs as planned.

Learning rate per token: a packed step holds more examples than a padded one, so a packed pass has
fewer steps. The schedule keeps its shape (linear warm-up over the first `WARMUP_SHARE` of the pass,
then cosine to ``min_lr_ratio`` of the peak), and the packed runs' peak learning rate is the
recipe's times ``padded steps / packed steps`` (tokens per step); the scale is in each run's bench
header (``lr_scale``). Validation runs on unpacked batches of the whole valid split in every run, at
the start and after the pass, so validation losses compare.

Datasets (`DATASETS`; ``--pack-datasets``): ``timing`` (the main suite's 300-1020-token text),
``chat`` (long-tailed, `flashtune.bench.timing_data` kind ``chat``: median 200 tokens, a tail to
2048), and, small enough for a CPU, ``capitals`` (the first examples of the shipped dataset:
47-64 tokens each) and ``chat-small`` (median 48, a tail to 256). Results go to
``packing/<model>/<dataset>/<impl>-packed.jsonl``, ``<impl>-padded.jsonl`` and
``mlx_lm.lora.jsonl``; on a GPU each follows a warm-up run of the same settings under ``cold/``.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from flashtune.bench import assets
from flashtune.bench.peer import TOOL
from flashtune.bench.runs import Run, recipe_path

PACK_IMPLS = ("poc", "demo", "practical")
VARIANTS = ("packed", "padded")
SPREAD_RUNS = 2  # padded runs with seeds 1, 2: the validation-loss yardstick
WARMUP_SHARE = 0.1  # of the pass's steps: the main recipes warm up for 10 of 100 iterations
DATASETS: dict[str, dict[str, Any]] = {
    "timing": {"kind": "variable", **assets.VARIABLE},
    "chat": {"kind": "chat", "median": 200, "sigma": 1.0, "lo": 16, "hi": 2048, "n_train": 1000, "n_valid": 32},
    "capitals": {"kind": "shipped", "n_train": 32, "n_valid": 8},
    "chat-small": {"kind": "chat", "median": 48, "sigma": 1.0, "lo": 8, "hi": 256, "n_train": 40, "n_valid": 8},
}


def plan_runs(
    models: list[str],
    datasets: list[str],
    impls: list[str],
    warmup_iters: int,
    fine_tune_type: str = "lora",
    spread_runs: int = SPREAD_RUNS,
) -> list[Run]:
    """The suite's runs, in order: per model and dataset, each flashtune implementation packed then
    padded, then mlx_lm.lora, each preceded by its warm-up run when ``warmup_iters`` (< 0: as long);
    then ``spread_runs`` padded runs of the first implementation with seeds 1, 2, ... (no warm-up:
    their validation loss is what counts).

    Their pass lengths and learning rates are set later, from the data (`apply_pass`).
    """
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"unknown packing dataset {name!r}; choose from {', '.join(DATASETS)}")
    for impl in impls:
        if impl not in (*PACK_IMPLS, TOOL):
            raise ValueError(f"unknown packing implementation {impl!r}; choose from {', '.join((*PACK_IMPLS, TOOL))}")
    pairs = [(i, v) for i in impls if i != TOOL for v in VARIANTS] + [(TOOL, None)] * (TOOL in impls)
    reseeded = [i for i in impls if i != TOOL][:1]
    runs = []
    for model in models:
        for dataset in datasets:
            for impl, variant in pairs:
                same = dict(model=model, impl=impl, dataset=dataset, variant=variant, fine_tune_type=fine_tune_type)
                if warmup_iters:
                    runs.append(Run("packing-cold", iters=None if warmup_iters < 0 else warmup_iters, **same))
                runs.append(Run("packing", **same))
            for impl in reseeded:
                for seed in range(1, spread_runs + 1):
                    runs.append(Run("packing", model, impl, dataset=dataset, variant=f"padded-seed{seed}",
                                    fine_tune_type=fine_tune_type))  # fmt: skip
    return runs


def variant_seed(variant: str | None) -> int | None:
    """The seed of a reseeded padded run (``padded-seed2`` -> 2), else None."""
    return int(variant.removeprefix("padded-seed")) if variant and variant.startswith("padded-seed") else None


@dataclasses.dataclass(frozen=True)
class PassPlan:
    """One pass over a dataset, padded and packed, with the same rows per step."""

    examples: int
    batch_size: int
    grad_accumulation: int
    padded_steps: int
    packed_steps: int
    pack_length: int
    learning_rate: float  # the recipe's peak, the padded runs'
    input_tokens: int  # slots the examples fill
    planned_packed_fill: float  # share of the packed pass's slots holding example tokens

    @property
    def lr_scale(self) -> float:
        """Tokens per packed step over tokens per padded step: the packed runs' learning-rate factor."""
        return self.padded_steps / self.packed_steps

    def settings(self, packed: bool) -> tuple:
        """(iterations, config overrides) of a pass: warm-up, and for packing the row length and scaled peak."""
        steps = self.packed_steps if packed else self.padded_steps
        overrides: dict[str, Any] = {"warmup": round(WARMUP_SHARE * steps)}
        if packed:
            overrides.update(pack=True, pack_length=self.pack_length, learning_rate=self.learning_rate * self.lr_scale)
        return steps, overrides


def pass_plan(config, train, granularity: int) -> PassPlan:
    """Counts one pass's steps over the tokenized ``train`` split.

    Args:
        config: the recipe's resolved TrainConfig (batch size, gradient accumulation, learning rate).
        train: the training split, tokenized as `flashtune train` does (`flashtune.data.Dataset`).
        granularity: the device's padded-length multiple (`flashtune.data.shapes.COSTS`).

    Returns:
        The `PassPlan`.
    """
    from flashtune.data import num_batches
    from flashtune.data.packing import efficiency, input_length, packed_batches
    from flashtune.train.prepare import pack_length

    length = pack_length(config, train, granularity)
    steps = lambda batches: math.ceil(batches / config.grad_accumulation)  # noqa: E731
    return PassPlan(
        examples=len(train.examples), batch_size=config.batch_size, grad_accumulation=config.grad_accumulation,
        padded_steps=steps(num_batches(train, config.batch_size)),
        packed_steps=steps(len(packed_batches(train, config.batch_size, length))),
        pack_length=length, learning_rate=config.learning_rate, input_tokens=sum(input_length(e) for e in train.examples),
        planned_packed_fill=efficiency(train, config.batch_size, length),
    )  # fmt: skip


def measure_pass(recipes: Path, data_dir: Path, setup, backend: str) -> PassPlan:
    """`pass_plan` of ``data_dir``'s training split, tokenized with the model's tokenizer.

    Args:
        recipes: the recipe folder (its ``packing-<model>.yaml`` gives batch size and learning rate).
        data_dir: the dataset folder.
        setup: the model's `assets.ModelSetup`.
        backend: the MLX backend the runs use ("cuda", "metal", "cpu").
    """
    import argparse

    from flashtune import config as config_module
    from flashtune.data.shapes import COSTS
    from flashtune.train.prepare import check_data_files, load_splits

    recipe = recipe_path("packing", setup.name, recipes)
    config = config_module.resolve(argparse.Namespace(config=str(recipe)), data=str(data_dir))
    splits = load_splits(config, assets.tokenizer_of(setup), check_data_files(config.data), None)
    return pass_plan(config, splits.train, COSTS.get(backend, COSTS["cpu"]).granularity)


def apply_pass(run: Run, plan: PassPlan) -> Run:
    """Sets ``run``'s iterations (unless a warm-up of fixed length), flags and bench-header notes."""
    packed = run.variant == "packed"
    steps, run.overrides = plan.settings(packed)
    if (seed := variant_seed(run.variant)) is not None:
        run.overrides["seed"] = seed
    run.iters = run.iters or steps
    scale = plan.lr_scale if packed else 1.0
    run.extra = {
        "pass": dataclasses.asdict(plan),
        "pass_steps": steps,
        "lr_scale": scale,
        "peak_learning_rate": plan.learning_rate * scale,
    }
    return run


def prepare_dataset(name: str, setup, cache: Path, seed: int) -> Path:
    """The folder of packing dataset ``name`` for ``setup``'s tokenizer, written once."""
    from flashtune.bench import timing_data

    spec = dict(DATASETS[name])
    if spec["kind"] == "shipped":
        return shipped_subset(
            cache / "data" / f"capitals-{spec['n_train']}-{spec['n_valid']}", spec["n_train"], spec["n_valid"]
        )
    if name == "timing":
        return assets.prepare_data(setup, cache, seed)  # the main suite's own folder
    folder = cache / "data" / assets.slug(setup.name) / f"{setup.weights}-{name}"
    timing_data.ensure_dataset(folder, assets.tokenizer_of(setup), seed=seed, **spec)
    return folder


def shipped_subset(folder: Path, n_train: int, n_valid: int) -> Path:
    """The first ``n_train`` training and ``n_valid`` validation examples of the shipped dataset, as a folder."""
    from flashtune.data import default_dataset_dir

    source = default_dataset_dir()
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"kind": "shipped", "source": "flashtune's shipped capitals dataset", "lo": None, "hi": None,
                            "distribution": "capital-city answer cards of 47-64 tokens with SmolLM2's tokenizer"}  # fmt: skip
    for split, n in (("train", n_train), ("valid", n_valid)):
        lines = [line for line in (source / f"{split}.jsonl").read_text().splitlines() if line.strip()][:n]
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
        meta[split] = {"examples": len(lines)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


def describe(meta: dict[str, Any] | None) -> str:
    """A dataset in words for the report, from its meta.json."""
    meta = meta or {}
    train = meta.get("train") or {}
    size = f"{train.get('examples')} training examples" + (
        f", {train['tokens']:,} tokens" if train.get("tokens") else ""
    )
    if meta.get("kind") == "shipped":
        return f"{meta.get('source')}, first {size} ({meta.get('distribution')})"
    return f"text, lengths {meta.get('distribution', '?')} ({size}, seed {meta.get('seed')})"
