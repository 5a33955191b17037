"""What one fine-tuning run of the comparison is (suite, model, tool, shape, data) and where its files go."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flashtune.bench.assets import slug


def recipe_path(suite: str, model: str, recipes: Path) -> Path:
    """``recipes/finetune-<model>.yaml`` for the main suite, ``sweep-``, ``packing-`` and ``context-<model>.yaml`` for the others."""
    kind = (
        "finetune"
        if suite in ("main", "cold")
        else "packing"
        if suite.startswith("packing")
        else suite
        if suite == "context"
        else "sweep"
    )
    return recipes / f"{kind}-{slug(model)}.yaml"


@dataclass
class Run:
    """One training run: which suite, model, tool/implementation and shape."""

    suite: str  # "main" | "cold" (the warm-up run before a main run) | "sweep" | "packing" | "packing-cold" | "context"
    model: str
    impl: str  # an attention name, "mlx_lm.lora" or "mlx_lm.lora+grad-checkpoint"
    length: int | None = None  # sweep: fixed_length; context: tokens per sequence
    batch: int | None = None  # sweep: batch size
    iters: int | None = None  # overrides the recipe
    fine_tune_type: str = "lora"  # for flashtune and mlx_lm.lora alike
    dataset: str | None = None  # packing: the dataset's name (flashtune.bench.packing.DATASETS)
    variant: str | None = None  # packing: "packed" | "padded" (None: mlx_lm.lora, which pads its own way)
    overrides: dict[str, Any] = field(default_factory=dict)  # config values passed as `flashtune train` flags
    extra: dict[str, Any] = field(default_factory=dict)  # written into the bench header as is

    @property
    def is_warmup(self) -> bool:
        return self.suite in ("cold", "packing-cold")

    @property
    def data_key(self) -> tuple:
        """Which entry of `Bench.data` holds its dataset (a warm-up run's is its measured run's)."""
        if self.dataset:
            return ("packing", self.model, self.dataset)
        return (self.suite if self.suite != "cold" else "main", self.model, self.length)

    @property
    def relpath(self) -> Path:
        """Where its JSONL goes; runs of another type than LoRA under a folder named after it."""
        kind = [] if self.fine_tune_type == "lora" else [self.fine_tune_type]
        if self.dataset:
            name = f"{self.impl}-{self.variant}" if self.variant else self.impl
            return Path(
                *kind, "packing", self.model, self.dataset, *(["cold"] if self.is_warmup else []), f"{name}.jsonl"
            )
        if self.suite in ("sweep", "context"):
            return Path(*kind, self.suite, self.model, f"L{self.length}-{self.impl}.jsonl")
        return Path(*kind, "main", self.model, *(["cold"] if self.suite == "cold" else []), f"{self.impl}.jsonl")

    @property
    def name(self) -> str:
        shape = f" {self.batch}x{self.length}" if self.length else ""
        kind = "" if self.fine_tune_type == "lora" else f" {self.fine_tune_type}"
        data = f" {self.dataset}" if self.dataset else ""
        return f"{self.suite}{kind} {self.model}{data}{shape} {self.impl}{f' {self.variant}' if self.variant else ''}"
