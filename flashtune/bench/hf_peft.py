"""The hf-peft peer: Hugging Face transformers + PEFT on PyTorch (SDPA), trained on flashtune's own batches.

What a person with an NVIDIA GPU reaches for to fine-tune TinyLlama or Qwen2.5 with LoRA. The
torch side is `flashtune/bench/hf_peft_train.py`, a file any Python with torch runs (no MLX);
this side decides whether and where it runs, and prepares what it trains on:

- the weights flashtune trains: the same HF folder mlx_lm.lora gets (`assets.export_weights`:
  architecture-exact random weights, or the real ones), loaded with ``attn_implementation="sdpa"``;
- the batches flashtune trains on, in the same order and padding: `export_batches` tokenizes the
  data as ``flashtune train`` does, plans the padded lengths for this device
  (`prepare.plan_pad_lengths`) and writes every iteration's (inputs, targets, mask) as .npz;
- LoRA on every Linear of the last ``lora_layers`` blocks (mlx-lm's default targets, PEFT's
  ``layers_to_transform``), rank r and ``lora_alpha = scale * r`` (mlx-lm's ``scale`` is PEFT's
  ``alpha / r``); ``--fine-tune-type dora`` is PEFT's ``use_dora``, ``full`` trains every weight
  of those blocks; AdamW with flashtune's weight decay and warm-up + cosine schedule.

``hf-peft`` runs eagerly, ``hf-peft+compile`` under ``torch.compile``. Both need torch with
CUDA (``--hf-peft-device cpu`` runs them on the CPU instead); elsewhere they are skipped with
one line. ``--torch-python`` (default: ``$FLASHTUNE_TORCH_PYTHON``, else this interpreter)
names the Python that has torch, transformers and peft.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HF_TOOL = "hf-peft"
HF_COMPILE = "hf-peft+compile"
HF_IMPLS = (HF_TOOL, HF_COMPILE)
TRAIN_SCRIPT = Path(__file__).resolve().with_name("hf_peft_train.py")
TORCH_PYTHON_ENV = "FLASHTUNE_TORCH_PYTHON"
DEVICES = ("auto", "cuda", "cpu")


@dataclass
class HfOptions:
    """Where hf-peft runs: the Python with torch, the torch device, and what its probe found."""

    python: str
    device: str  # "cuda" | "cpu"
    probe: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The hf-peft options of `flashtune bench finetune`."""
    parser.add_argument("--torch-python", help=f"the Python that has torch, transformers and peft, for {', '.join(HF_IMPLS)} "
                        f"(default: ${TORCH_PYTHON_ENV}, else this interpreter)")  # fmt: skip
    parser.add_argument("--hf-peft-device", choices=DEVICES, default="auto",
                        help=f"where {HF_TOOL} runs: auto/cuda (skipped without a CUDA device) or cpu (tests, small checks)")  # fmt: skip


def torch_python(given: str | None = None) -> str:
    """``given``, else $FLASHTUNE_TORCH_PYTHON, else this interpreter."""
    return given or os.environ.get(TORCH_PYTHON_ENV) or sys.executable


@functools.cache
def probe(python: str) -> tuple[dict[str, Any] | None, str]:
    """Asks ``python`` for its torch, transformers and peft versions and CUDA device.

    Returns:
        (the probe's answer, "") or (None, why it failed: the error's last line).
    """
    try:
        done = subprocess.run([python, str(TRAIN_SCRIPT), "--probe"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"{python}: {error}"
    if done.returncode == 0:
        try:
            return json.loads(done.stdout.strip().splitlines()[-1]), ""
        except (ValueError, IndexError):
            pass
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return None, f"{python}: {lines[-1] if lines else f'exit status {done.returncode}'}"


def check(python: str, device: str) -> tuple[HfOptions | None, str]:
    """(options, "") when hf-peft can run on ``device`` ("auto", "cuda", "cpu") with ``python``, else (None, why not)."""
    if device not in DEVICES:
        raise ValueError(f"hf-peft device {device!r}; choose one of {', '.join(DEVICES)}")
    info, reason = probe(python)
    if info is None:
        return None, f"{'torch with CUDA' if device != 'cpu' else 'torch, transformers and peft'} not found: {reason}"
    if device != "cpu" and not info.get("cuda"):
        return (
            None,
            f"torch with CUDA not found: {python} has torch {info.get('torch')} without a CUDA device; --hf-peft-device cpu runs it on the CPU",
        )
    return HfOptions(python, "cpu" if device == "cpu" else "cuda", info), ""


def keep_available(impls: list[str], sweep_impls: list[str], python: str | None, device: str, say=print):
    """Drops the hf-peft implementations from both lists, saying so in one line, when they cannot run here.

    Returns:
        (impls, sweep_impls, `HfOptions` or None).
    """
    if not any(i in HF_IMPLS for i in [*impls, *sweep_impls]):
        return impls, sweep_impls, None
    options, reason = check(torch_python(python), device)
    if options is None:
        say(f"{HF_TOOL}: skipped ({reason})")
        return [i for i in impls if i not in HF_IMPLS], [i for i in sweep_impls if i not in HF_IMPLS], None
    return impls, sweep_impls, options


def export_batches(config, data_dir: Path, setup, backend: str, folder: Path) -> dict[str, Any]:
    """Writes the micro-batches ``flashtune train`` would train on, as ``step-NNNNN.npz`` + ``batches.json``.

    Args:
        config: the run's resolved TrainConfig.
        data_dir: its dataset folder.
        setup: the model's `assets.ModelSetup` (tokenizer; model context from ``hf_folder``'s config.json).
        backend: the MLX backend whose padding plan to follow ("cuda", "metal", "cpu").
        folder: where to write (created).

    Returns:
        The contents of batches.json.
    """
    from flashtune import data
    from flashtune.bench.assets import tokenizer_of
    from flashtune.train.prepare import check_data_files, load_splits, plan_pad_lengths

    if config.pack:
        raise ValueError(
            "hf-peft trains padded batches: --pack (packed rows with per-document attention) is flashtune's alone"
        )
    context = json.loads((Path(setup.hf_folder) / "config.json").read_text()).get("max_position_embeddings")
    config = _with_data(config, data_dir)
    splits = load_splits(config, tokenizer_of(setup), check_data_files(config.data), context)
    pad_lengths, pad_to = plan_pad_lengths(config, splits.train, backend)
    n = config.iters * config.grad_accumulation
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"files": [], "shapes": [], "documents": [], "input_tokens": [], "loss_tokens": 0}
    for i, batch in enumerate(
        data.iterate_batches(
            splits.train,
            config.batch_size,
            seed=config.seed,
            num_steps=n,
            pad_to_multiple=pad_to,
            pad_lengths=pad_lengths,
        )
    ):
        arrays = {"inputs": np.array(batch.inputs), "targets": np.array(batch.targets), "mask": np.array(batch.mask)}
        meta["files"].append(f"step-{i + 1:05d}.npz")
        np.savez(folder / meta["files"][-1], **arrays)
        meta["shapes"].append(list(arrays["inputs"].shape))
        meta["documents"].append(batch.documents)
        meta["input_tokens"].append(batch.input_tokens)
        meta["loss_tokens"] += int(arrays["mask"].sum())
    meta.update(pad_lengths=pad_lengths, pad_to_multiple=pad_to, backend=backend, batch_size=config.batch_size,
                grad_accumulation=config.grad_accumulation, seed=config.seed, data=str(data_dir))  # fmt: skip
    (folder / "batches.json").write_text(json.dumps(meta))
    return meta


def _with_data(config, data_dir: Path):
    import dataclasses

    return dataclasses.replace(config, data=str(data_dir))


def run_config(config, label: str, dtype: str, device: str, compiled: bool) -> dict[str, Any]:
    """hf_peft_train.py's --config: flashtune's LoRA, AdamW and schedule settings in PEFT's terms.

    Args:
        config: the run's resolved TrainConfig.
        label: the model's label for the records ("... (random-init weights)" for random weights).
        dtype: "bfloat16", "float32" or "float16".
        device: "cuda" or "cpu".
        compiled: run the loss and its backward under torch.compile.
    """
    return {
        "iters": config.iters, "grad_accumulation": config.grad_accumulation, "learning_rate": config.learning_rate,
        "warmup": config.warmup, "min_lr_ratio": config.min_lr_ratio, "weight_decay": config.weight_decay,
        "lora": {"rank": config.lora_rank, "alpha": config.lora_scale * config.lora_rank, "dropout": config.lora_dropout, "layers": config.lora_layers},
        "fine_tune_type": config.fine_tune_type, "grad_checkpoint": config.grad_checkpoint, "dtype": dtype, "device": device, "compile": compiled, "seed": config.seed,
        "label": label, "flashtune_config": config.to_dict(),
    }  # fmt: skip


def prepare_run(setup, config, impl: str, data_dir: Path, options: HfOptions, work: Path, records: Path) -> list[str]:
    """Writes the batches and the run config into ``work``; returns the command that trains.

    The weights must be in ``setup.hf_folder`` already (`assets.export_weights`).
    """
    from flashtune import env
    from flashtune.models import resolve_dtype

    dtype = str(resolve_dtype(config.dtype)).split(".")[-1]
    export_batches(config, data_dir, setup, env.backend(), work / "batches")
    (work / "run.json").write_text(
        json.dumps(run_config(config, setup.label, dtype, options.device, impl == HF_COMPILE))
    )
    return [options.python, str(TRAIN_SCRIPT), "--model", str(setup.hf_folder), "--batches", str(work / "batches"),
            "--config", str(work / "run.json"), "--out", str(records)]  # fmt: skip


def child_env() -> dict[str, str]:
    """The torch process's environment: this one, unbuffered; flashtune's package folder is not added
    (it may be another Python's site-packages)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")


def report_note(info: dict[str, Any]) -> str:
    """The report's note on how hf-peft is run and what differs, with the versions from one of its run_info headers."""
    versions = (
        ", ".join(f"{k} {info[k]}" for k in ("torch", "transformers", "peft") if info.get(k))
        or "versions in each run's run_info"
    )
    return (
        f"{HF_TOOL} is Hugging Face transformers + PEFT on PyTorch ({versions}; `flashtune/bench/hf_peft_train.py`), "
        '`attn_implementation="sdpa"` (causal, no mask), in the same dtype, on the weights mlx_lm.lora gets '
        "(flashtune's own, saved as an HF folder) and on the very batches flashtune trains on (same order and "
        "padding, exported as .npz). LoRA on the same projections of the same last blocks (`layers_to_transform`), "
        "rank r, `lora_alpha` = scale × r (DoRA: PEFT's `use_dora`; full fine-tuning: every weight of those blocks); torch's AdamW (fused on CUDA) with the same weight decay and warm-up + cosine "
        "schedule; loss = sum(CE × mask) / sum(mask). Each iteration is timed after `torch.cuda.synchronize()`; peak "
        "GB is `torch.cuda.max_memory_allocated` (none on a CPU). What differs: PEFT computes the LoRA branch in "
        "float32 (as mlx-lm does; flashtune in the activations' dtype), torch's AdamW corrects the moments' bias "
        "(MLX's does not by default), and no validation runs (val loss –). hf-peft+compile runs the loss and its "
        "backward under `torch.compile`: its warm-up run fills inductor's on-disk caches as flashtune's fills MLX's "
        "kernel cache; tracing is paid again in every process, and shows in the iterations flagged as new shapes."
    )
