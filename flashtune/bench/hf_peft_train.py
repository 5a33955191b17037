"""LoRA with Hugging Face transformers + PEFT on PyTorch over batches flashtune exported, recorded as flashtune records.

A standalone file: it imports numpy and the standard library at the top and torch, transformers
and peft inside functions (never mlx, never the flashtune package), so any Python that has torch
runs it by path, and flashtune's tests import its pure functions without torch:

    python hf_peft_train.py --model DIR --batches DIR --config run.json --out records.jsonl
    python hf_peft_train.py --probe     # one JSON line: versions, CUDA, device name

- ``--model``: an HF folder (config.json, and safetensors weights when there are any: loaded as
  they are; without weights the model is built from config.json with HF's own seeded random
  initialization). Attention is ``attn_implementation="sdpa"``; no attention mask is passed, so
  every layer runs causal SDPA, as flashtune's batches (padding at the end) need.
- ``--batches``: ``batches.json`` and one ``step-NNNNN.npz`` per micro-batch (``inputs``,
  ``targets`` int32 and ``mask`` float32, all (B, L)), written by `flashtune.bench.hf_peft`.
- ``--config``: the run's settings (see `check_config`): iterations, LoRA (rank, alpha, dropout,
  the last ``layers`` blocks), AdamW and its schedule, dtype, device, torch.compile.
- ``--out``: appended to: a ``run_info`` header, then one record per iteration in flashtune's
  format (``iter, wall_s, tokens, tokens_per_s, loss, lr, peak_mem_gb, attn, model, shape,
  padded_tokens, warmup``).

Loss = sum(CE * mask) / sum(mask) over the iteration's micro-batches, as flashtune's
``loss_sum``; an iteration's wall time runs from its first host-to-device copy to the end of
the optimizer step, after ``torch.cuda.synchronize()`` on CUDA.
"""

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TOOL = "hf-peft"
CONFIG_KEYS = ("iters", "grad_accumulation", "learning_rate", "warmup", "min_lr_ratio", "weight_decay", "lora", "dtype", "device", "compile", "seed", "label")  # fmt: skip
LORA_KEYS = ("rank", "alpha", "dropout", "layers")


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Raises ValueError naming missing keys of the run config; returns it."""
    missing = [k for k in CONFIG_KEYS if k not in config] + [
        f"lora.{k}" for k in LORA_KEYS if k not in config.get("lora", {})
    ]
    if missing:
        raise ValueError(
            f"run config lacks {', '.join(missing)}; it needs {', '.join(CONFIG_KEYS)} and lora.{{{', '.join(LORA_KEYS)}}}"
        )
    if config["device"] not in ("cuda", "cpu"):
        raise ValueError(f"device {config['device']!r}; choose cuda or cpu")
    return config


def learning_rate(step: int, config: dict[str, Any]) -> float:
    """The rate of update ``step`` (0-based): linear warm-up from 0, then cosine to min_lr_ratio of the peak.

    The same schedule as flashtune.train.prepare.make_schedule (MLX's linear_schedule joined to
    cosine_decay at ``warmup``).
    """
    peak, warmup = config["learning_rate"], config["warmup"]
    if step < warmup:
        return peak * step / warmup
    decay = max(config["iters"] - warmup, 1)
    end = peak * config["min_lr_ratio"]
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, decay) / decay))


def load_batches(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(batches.json, micro-batches in order), every array read into memory before training.

    A micro-batch holds ``inputs``, ``targets``, ``mask`` and its ``documents`` (examples) and
    ``input_tokens`` (slots holding example tokens) as batches.json lists them.
    """
    folder = Path(folder)
    meta = json.loads((folder / "batches.json").read_text())
    batches = []
    for i, name in enumerate(meta["files"]):
        with np.load(folder / name) as arrays:
            batch = {k: arrays[k] for k in ("inputs", "targets", "mask")}
        batch.update(documents=meta["documents"][i], input_tokens=meta["input_tokens"][i])
        batches.append(batch)
    return meta, batches


def step_record(it: int, wall: float, tokens: int, loss: float, lr: float, peak_gb: float | None,
                parts: list[dict[str, Any]], new_shape: bool, label: str) -> dict[str, Any]:  # fmt: skip
    """One iteration over the micro-batches ``parts``: a record with flashtune.train.records' fields (``attn`` is "sdpa")."""
    shapes = [tuple(int(n) for n in p["inputs"].shape) for p in parts]
    return {
        "iter": it, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "loss": loss, "lr": lr,
        "peak_mem_gb": peak_gb, "attn": "sdpa", "model": label, "shape": list(shapes[0]),
        "padded_tokens": sum(b * n for b, n in shapes), "documents": sum(p["documents"] for p in parts),
        "input_tokens": sum(p["input_tokens"] for p in parts), "warmup": new_shape, "source": TOOL,
    }  # fmt: skip


def probe() -> dict[str, Any]:
    """Versions of torch, transformers and peft, and the CUDA device if there is one (raises ImportError)."""
    import torch  # first: a Python without torch says so, not that peft is missing

    # isort: split
    import peft
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "cuda": cuda, "cuda_version": torch.version.cuda, "device_name": torch.cuda.get_device_name(0) if cuda else cpu_name(),
        "python": sys.executable,
    }  # fmt: skip


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_dtype(name: str):
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r}; choose one of {', '.join(dtypes)}")
    return dtypes[name]


def load_model(folder: Path, dtype: str, device: str, seed: int):
    """The HF model of ``folder`` with SDPA attention: its safetensors weights, else seeded random ones.

    Returns:
        (model on ``device``, where its weights came from).
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    # transformers before 4.56 names the argument torch_dtype, and would pass an unknown `dtype` on to the config unused.
    old = tuple(int(part) for part in transformers.__version__.split(".")[:2]) < (4, 56)
    kind = {"torch_dtype" if old else "dtype": _torch_dtype(dtype), "attn_implementation": "sdpa"}
    if any(folder.glob("*.safetensors")):
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, config=config, use_safetensors=True, output_loading_info=True, **kind
        )
        # A weight the file lacks would be initialized at random without a word: refuse instead.
        missing = [k for k in info.get("missing_keys", []) if "rotary" not in k]
        if missing:
            raise ValueError(f"{folder}: the safetensors lack {missing[:5]} ({len(missing)} tensors)")
        source = f"safetensors in {folder}"
    else:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, **kind)
        source = f"random-init from {folder / 'config.json'} (HF's initialization, torch seed {seed})"
    if next(model.parameters()).dtype != _torch_dtype(dtype):
        raise ValueError(f"the model loaded as {next(model.parameters()).dtype}, not {dtype}")
    return model.to(device), source


def lora_targets(model) -> list[str]:
    """Names of every Linear layer inside a decoder block: mlx-lm's default LoRA targets."""
    import torch

    block = model.model.layers[0]
    return sorted({name.rsplit(".", 1)[-1] for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)})


def make_trainable(model, lora: dict[str, Any], fine_tune_type: str, seed: int):
    """What trains, as mlx-lm's --fine-tune-type means it, on the last ``lora["layers"]`` blocks.

    "lora" and "dora": PEFT adapters (``use_dora`` for DoRA) on every Linear of those blocks;
    "full": every weight of those blocks (embedding, final norm and LM head stay frozen).

    Returns:
        (the model to train, a description of what trains: PEFT's LoraConfig as a dict, or the blocks).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    n_blocks = len(model.model.layers)
    if not 0 < lora["layers"] <= n_blocks:
        raise ValueError(f"lora layers {lora['layers']}, but the model has {n_blocks} blocks; choose 1..{n_blocks}")
    blocks = list(range(n_blocks - lora["layers"], n_blocks))
    if fine_tune_type == "full":
        model.requires_grad_(False)
        for index in blocks:
            model.model.layers[index].requires_grad_(True)
        return model, {"fine_tune_type": "full", "blocks": blocks}
    if fine_tune_type not in ("lora", "dora"):
        raise ValueError(f"fine_tune_type {fine_tune_type!r}; choose lora, dora or full")
    config = LoraConfig(
        r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora_targets(model),
        layers_to_transform=blocks, layers_pattern="layers", bias="none", use_dora=fine_tune_type == "dora",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    torch.manual_seed(seed)  # LoRA A's initialization
    return get_peft_model(model, config), config.to_dict()


def make_loss(model, compiled: bool):
    """``loss(inputs, targets, mask) -> summed masked cross-entropy`` (float32), torch.compile'd if asked."""
    import torch
    import torch.nn.functional as F

    def loss_sum(inputs, targets, mask):
        logits = model(input_ids=inputs, use_cache=False).logits
        # float32 logits for the cross-entropy, as transformers' own causal-LM loss does.
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten().long(), reduction="none")
        return (ce * mask.flatten()).sum()

    return torch.compile(loss_sum) if compiled else loss_sum


def run_info(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The header record: versions, device, the full config."""
    import datetime

    info = probe()
    backend = config["device"]
    return {
        "run_info": True, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "tool": TOOL,
        "torch": info["torch"], "transformers": info["transformers"], "peft": info["peft"], "numpy": np.__version__,
        "cuda_version": info["cuda_version"], "python": platform.python_version(),
        "device": {"name": info["device_name"] if backend == "cuda" else cpu_name(), "backend": backend, "platform": platform.platform()},
        "attn_implementation": "sdpa", "dtype": config["dtype"], "seed": config["seed"], "config": config, **extra,
    }  # fmt: skip


class Trainer:
    """One run: model with LoRA, AdamW, the loss, and the iteration loop writing records to ``out``."""

    def __init__(self, model_dir: Path, config: dict[str, Any], out):
        import torch

        self.config, self.out, self.device = check_config(config), out, config["device"]
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device cuda asked for, but torch {torch.__version__} sees no CUDA device")
        base, source = load_model(model_dir, config["dtype"], self.device, config["seed"])
        if config.get("grad_checkpoint"):
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model, trains = make_trainable(base, config["lora"], config.get("fine_tune_type", "lora"), config["seed"])
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        fused = {"fused": True} if self.device == "cuda" else {}
        self.optimizer = torch.optim.AdamW(
            params, lr=0.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=config["weight_decay"], **fused
        )
        self.loss = make_loss(self.model, config["compile"])
        trainable = sum(p.numel() for p in params)
        self.write(run_info(config, weights=source, trains=_jsonable(trains), trainable_params=trainable,
                            adapter_dtype=str(params[0].dtype).replace("torch.", "")))  # fmt: skip

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def peak_gb(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / 1e9 if self.device == "cuda" else None

    def step(self, parts: list[dict[str, Any]], lr: float) -> tuple[float, int]:
        """One update over its micro-batches; returns (loss, loss tokens), the device waited for."""
        import torch

        tokens = int(sum(p["mask"].sum() for p in parts))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = None
        for part in parts:
            inputs, targets, mask = (
                torch.from_numpy(part[k]).to(self.device, non_blocking=True) for k in ("inputs", "targets", "mask")
            )
            loss_sum = self.loss(inputs, targets, mask)
            (loss_sum / tokens).backward()  # the gradient of the iteration's mean loss, as flashtune divides
            total = loss_sum.detach() if total is None else total + loss_sum.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = total.item() / tokens
        self.sync()
        return loss, tokens

    def run(self, batches: list[dict[str, Any]]) -> None:
        """Every iteration, timed and recorded; a new batch shape flags its iteration ``warmup``."""
        import torch

        config, seen = self.config, set()
        per_step = config["grad_accumulation"]
        if len(batches) < config["iters"] * per_step:
            raise ValueError(f"{len(batches)} micro-batches for {config['iters']} iterations of {per_step}")
        self.sync()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for it in range(1, config["iters"] + 1):
            parts = batches[(it - 1) * per_step : it * per_step]
            shapes = [tuple(int(n) for n in p["inputs"].shape) for p in parts]
            lr = learning_rate(it - 1, config)
            tic = time.perf_counter()
            loss, tokens = self.step(parts, lr)
            wall = time.perf_counter() - tic
            if not math.isfinite(loss):
                raise RuntimeError(f"loss became {loss} at iteration {it}")
            new_shape = any(s not in seen for s in shapes)
            seen.update(shapes)
            self.write(step_record(it, wall, tokens, loss, lr, self.peak_gb(), parts, new_shape, config["label"]))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hf_peft_train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probe", action="store_true", help="print versions and CUDA as one JSON line, then exit")
    parser.add_argument("--model", help="HF model folder (config.json, optionally safetensors weights)")
    parser.add_argument("--batches", help="folder of batches.json and step-NNNNN.npz")
    parser.add_argument("--config", help="run config JSON")
    parser.add_argument("--out", help="records JSONL (appended to)")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe()), flush=True)
        return 0
    missing = [f"--{k}" for k in ("model", "batches", "config", "out") if not getattr(args, k)]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --probe)")
    config = json.loads(Path(args.config).read_text())
    _, batches = load_batches(Path(args.batches))
    with open(args.out, "a") as out:
        Trainer(Path(args.model), config, out).run(batches)
    return 0


if __name__ == "__main__":
    # Run by path, Python puts this file's folder first on sys.path, where flashtune's bench
    # modules (report.py, attention.py, ...) could shadow modules that torch or transformers import.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.exit(main())
