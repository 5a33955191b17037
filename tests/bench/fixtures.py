"""Small synthetic results folders in the bench's JSONL format (headers, steps, failures)."""

import json
from pathlib import Path

RUN_INFO = {
    "run_info": True, "time": "2026-11-24T10:00:00+00:00", "flashtune": "0.1.0", "mlx": "0.32.4",
    "mlx_lm": "0.32.2", "git_sha": "abc123", "device": {"name": "NVIDIA H100 80GB HBM3", "backend": "cuda"},
    "dtype": "bfloat16", "seed": 0, "config": {},
}  # fmt: skip
LABEL = "TinyLlama-1.1B (random-init weights)"


def write_run(results: Path, relpath: str, *, suite: str, impl: str, step_s: float = 0.1, iters: int = 100,
              tokens: int = 2600, peak: float = 16.0, length: int | None = None, batch: int = 4,
              failed: str | None = None, window: int = 1, warmup_first: float = 2.0,
              fine_tune_type: str | None = None) -> Path:  # fmt: skip
    """One run file: bench header (without a fine_tune_type unless given, as older files), run_info,
    per-iteration (or per-window) records, end record."""
    lines: list[dict] = [{"bench": {
        "suite": suite, "model": "TinyLlama-1.1B", "label": LABEL, "weights": "random-init", "tokenizer": "stand-in",
        "impl": impl, "tool": "mlx_lm.lora" if impl == "mlx_lm.lora" else "flashtune", "length": length, "batch": batch,
        "iters": iters, "recipe": "recipes/x.yaml", "data": "d",
        "data_meta": {"kind": "fixed", "length": length, "seed": 0} if length else {"kind": "variable", "lo": 300, "hi": 1020, "seed": 0, "train": {"examples": 400}},
        "command": [], "order_in_call": 0,
    }}, dict(RUN_INFO)]  # fmt: skip
    if fine_tune_type:
        lines[0]["bench"]["fine_tune_type"] = fine_tune_type
    done = 0 if failed else iters
    for first in range(1, done + 1, window):
        last = min(first + window - 1, done)
        n = last - first + 1
        wall = (warmup_first if first == 1 else step_s) * n
        record = {"iter": last, "wall_s": wall, "tokens": tokens * n, "tokens_per_s": tokens * n / wall,
                  "loss": 3.0 - 0.01 * last, "lr": 1e-4, "peak_mem_gb": peak, "attn": impl, "model": LABEL,
                  "warmup": first == 1}  # fmt: skip
        if window > 1:
            record["window"] = [first, last]
        lines.append(record)
    if done:
        lines.append({"eval": True, "iter": done, "val_loss": 2.5, "eval_s": 1.0})
    end = {
        "run_end": True,
        "status": "failed" if failed else "ok",
        "returncode": 1 if failed else 0,
        "process_wall_s": 30.0,
    }
    if failed:
        end.update(error=failed, oom="memory" in failed)
    lines.append(end)
    path = Path(results) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def write_results(results: Path) -> Path:
    """A results folder with every kind of run the report draws, a failed one in each suite."""
    write_run(results, "main/TinyLlama-1.1B/baseline.jsonl", suite="main", impl="baseline", step_s=0.12)
    write_run(results, "main/TinyLlama-1.1B/demo.jsonl", suite="main", impl="demo", step_s=0.08, peak=12.0)
    write_run(
        results, "main/TinyLlama-1.1B/poc.jsonl", suite="main", impl="poc", failed="RuntimeError: kernel launch failed"
    )
    write_run(
        results,
        "main/TinyLlama-1.1B/mlx_lm.lora.jsonl",
        suite="main",
        impl="mlx_lm.lora",
        step_s=0.3,
        window=10,
        warmup_first=1.0,
    )
    write_run(results, "main/TinyLlama-1.1B/cold/demo.jsonl", suite="cold", impl="demo", iters=10, warmup_first=60.0)
    for length, batch in ((1024, 4), (4096, 1)):
        write_run(results, f"sweep/TinyLlama-1.1B/L{length}-demo.jsonl", suite="sweep", impl="demo", iters=20,
                  length=length, batch=batch, tokens=4096, step_s=0.1, peak=14.0)  # fmt: skip
    write_run(results, "sweep/TinyLlama-1.1B/L1024-baseline.jsonl", suite="sweep", impl="baseline", iters=20,
              length=1024, batch=4, tokens=4096, step_s=0.15, peak=20.0)  # fmt: skip
    write_run(results, "sweep/TinyLlama-1.1B/L4096-baseline.jsonl", suite="sweep", impl="baseline", iters=20,
              length=4096, batch=1, failed="RuntimeError: [malloc] out of memory")  # fmt: skip
    attention = [dict(RUN_INFO, kind="attention-bench")]
    for impl, ms in (("baseline", 5.0), ("practical", 2.0), ("demo", 0.6), ("poc", None)):
        r = {
            "impl": impl,
            "tag": "tinyllama",
            "batch": 4,
            "n_heads": 32,
            "n_kv_heads": 4,
            "length": 1024,
            "head_dim": 64,
            "causal": True,
        }
        r.update({"status": "ok", "fwd_ms": ms / 3, "fwdbwd_ms": ms, "fwd_tflops": 1.0, "fwdbwd_tflops": 2.0, "extra_mb": 10.0, "rel_err": 1e-3}
                 if ms else {"status": "oom", "error": "out of memory"})  # fmt: skip
        attention.append(r)
    (Path(results) / "attention.jsonl").write_text("".join(json.dumps(r) + "\n" for r in attention))
    return Path(results)


def tiny_bench(tmp_path: Path, recipe: str, **options):
    """A `Bench` over the tiny HF model and text dataset (tests.tiny_models), its main recipe ``recipe``.

    Args:
        options: more `Bench` fields (train_flags, hf, ...).

    Returns:
        The Bench; its results go to ``tmp_path / "results"``.
    """
    from flashtune.bench.assets import ModelSetup
    from flashtune.bench.runner import Bench
    from tests.tiny_models import write_text_dataset, write_tiny_hf_model

    folder = write_tiny_hf_model(tmp_path / "tiny")
    data = write_text_dataset(tmp_path / "data")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "finetune-tiny.yaml").write_text(recipe)
    setup = ModelSetup("tiny", "pretrained", str(folder), "pretrained", folder, folder, "tiny word-level")
    return Bench(tmp_path / "results", tmp_path, recipes, {"tiny": setup}, {("main", "tiny", None): data}, **options)
