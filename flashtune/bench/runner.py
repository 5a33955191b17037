"""Runs one fine-tuning run in a fresh subprocess and records it: flashtune train or mlx_lm lora.

Each run's JSONL: a ``{"bench": {...}}`` header (suite, model and its label, implementation,
shape, data, recipe, command), the tool's ``run_info`` header, per-iteration records in
``flashtune.train.records``'s format and a closing ``{"run_end": true, "status": "ok" | "failed", ...}``
(process wall time; for failures the error lines and whether memory ran out). It is written as
``.partial`` and renamed when the run ends, so an interrupted run is never taken for a finished one.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flashtune.bench import hf_peft
from flashtune.bench.assets import ModelSetup, export_weights
from flashtune.bench.hf_peft import HF_IMPLS, HF_TOOL, HfOptions
from flashtune.bench.peer import PEER_GC, PREFIX, TOOL, is_peer, parse_output, to_records
from flashtune.bench.portable import portable_file, run_roots
from flashtune.bench.runs import Run, recipe_path
from flashtune.bench.watch import Watch
from flashtune.errors import BudgetExceeded, is_out_of_memory

# The folder holding the flashtune package (a checkout or site-packages): child processes import it from there.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def _child_env() -> dict[str, str]:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    return env


def _error_summary(log_text: str, limit: int = 1500) -> str:
    """The exception lines of a log (``SomeError: ...``), else its last lines."""
    lines = [line.strip() for line in log_text.strip().splitlines() if line.strip()]
    errors = [
        line
        for line in lines
        if re.match(r"^[\w.]*(Error|Exception|error)\b.*:", line) or "out of memory" in line.lower()
    ]
    return ("\n".join(errors[-3:]) if errors else "\n".join(lines[-5:]))[-limit:] or "no output"


@dataclass
class Bench:
    """Runs `Run`s into ``results`` (see the module docstring)."""

    results: Path
    cache: Path
    recipes: Path
    setups: dict[str, ModelSetup]
    data: dict[tuple, Path | None]
    skip_existing: bool = False
    retry_failed: bool = False
    budget_s: float | None = None
    train_flags: list[str] = field(default_factory=list)  # added to every `flashtune train` (ablations)
    hf: HfOptions | None = None  # where the hf-peft runs go (None: none planned)
    memory_cap_gb: float | None = None  # resident-memory cap of each run's process (flashtune.bench.watch)
    verbose: bool = True  # print a line per finished run (callers with their own progress lines turn it off)
    started: float = field(default_factory=time.perf_counter)
    durations: dict[tuple, list[float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "skipped": 0, "left": 0, "failed": 0})

    def existing(self, run: Run) -> str | None:
        """'ok' or 'failed' for a finished run file, None when the run is still to do."""
        path = self.results / run.relpath
        if not path.is_file():
            return None
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return "failed" if any(r.get("status") == "failed" for r in lines) else "ok"

    def should_skip(self, run: Run) -> bool:
        state = self.existing(run) if self.skip_existing else None
        return state == "ok" or (state == "failed" and not self.retry_failed)

    def remaining(self) -> float | None:
        return None if self.budget_s is None else self.budget_s - (time.perf_counter() - self.started)

    def fits(self, run: Run) -> bool:
        left = self.remaining()
        if left is None:
            return True
        # The median of the runs seen (same suite and model, else same suite): a tool's first run in
        # a call can take minutes of one-time kernel compilation that the next runs do not pay.
        seen = self.durations.get((run.suite, run.model)) or [
            d for (s, _), ds in self.durations.items() if s == run.suite for d in ds
        ]
        guess = statistics.median(seen) if seen else 0.0
        return left > max(guess * 1.1, 10.0)

    def execute(self, run: Run) -> str | None:
        """Runs ``run`` unless skipped; returns its status ('ok', 'failed') or None (skipped/left)."""
        if self.should_skip(run):
            self.counts["skipped"] += 1
            return None
        if not self.fits(run):
            self.counts["left"] += 1
            print(f"  {run.name}: left for the next call (time budget)", flush=True)
            return None
        target = self.results / run.relpath
        partial = target.with_name(target.name + ".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        tic = time.perf_counter()
        try:
            status = self._tool(run.impl)(run, partial)
        except BudgetExceeded:
            partial.unlink(missing_ok=True)
            self.counts["left"] += 1
            print(f"  {run.name}: stopped at the time budget; left for the next call", flush=True)
            return None
        self.durations.setdefault((run.suite, run.model), []).append(time.perf_counter() - tic)
        # Records name no absolute path of this machine, so a results folder can be committed as is.
        portable_file(partial, run_roots(results=self.results, cache=self.cache, repo=PACKAGE_PARENT))
        partial.replace(target)
        self.counts["done"] += 1
        self.counts["failed"] += status != "ok"
        if self.verbose:
            print(f"  {run.name}: {_one_line(target)}", flush=True)
        return status

    # --- one run of each tool --------------------------------------------------------------------

    def _tool(self, impl: str):
        """The method that runs ``impl``: mlx_lm.lora (with or without its grad checkpointing), an
        hf-peft variant, or flashtune train."""
        if is_peer(impl):
            return self._peer
        return self._hf_peft if impl in HF_IMPLS else self._flashtune

    def _config(self, run: Run):
        from flashtune import config as config_module

        overrides = {"fine_tune_type": run.fine_tune_type}
        if run.iters:
            overrides["iters"] = run.iters
        if run.suite == "sweep":
            overrides.update(fixed_length=run.length, batch_size=run.batch, max_seq_length=run.length + 1)
        overrides.update(run.overrides)
        return config_module.resolve(
            argparse.Namespace(config=str(recipe_path(run.suite, run.model, self.recipes))), **overrides
        )

    def _header(self, run: Run, config, command: list[str]) -> dict:
        setup = self.setups[run.model]
        data = self.data.get(run.data_key)
        meta = data / "meta.json" if data else None
        return {"bench": {
            "suite": run.suite, "fine_tune_type": run.fine_tune_type, "model": run.model, "label": setup.label, "weights": setup.weights,
            "tokenizer": setup.tokenizer_note, "impl": run.impl, "tool": TOOL if is_peer(run.impl) else "flashtune",
            "length": run.length, "batch": config.batch_size, "iters": config.iters, "recipe": str(recipe_path(run.suite, run.model, self.recipes)),
            "data": str(data) if data else "flashtune's shipped dataset (capitals)",
            "data_meta": json.loads(meta.read_text()) if meta and meta.is_file() else None,
            "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "order_in_call": self.counts["done"],
            **({"dataset": run.dataset, "variant": run.variant} if run.dataset else {}), **run.extra,
        }}  # fmt: skip

    def _watch(self, proc: subprocess.Popen) -> Watch:
        """Kills ``proc`` at the time budget (`_wait` then raises BudgetExceeded) or the memory cap."""
        return Watch(proc, self.remaining(), self.memory_cap_gb)

    def _wait(self, proc: subprocess.Popen, watch: Watch, log) -> int:
        """The return code; a run stopped at the memory cap says so in ``log`` (an open file)."""
        rc = proc.wait()
        watch.cancel()
        if watch.over_budget:
            raise BudgetExceeded()
        if watch.over_memory:
            log.write(watch.over_memory + "\n")
        return rc

    def _flashtune(self, run: Run, partial: Path) -> str:
        setup = self.setups[run.model]
        config = self._config(run)
        data = self.data.get(run.data_key)
        run_dir = Path(tempfile.mkdtemp(prefix="ft-run-", dir=self.cache))
        command = [sys.executable, "-m", "flashtune.cli", "train", "--config", str(recipe_path(run.suite, run.model, self.recipes)),
                   "--attn", run.impl, "--model", setup.train_model, "--init", setup.init, "--records", str(partial),
                   "--out", str(run_dir), "--overwrite", "--no-sample", "--fine-tune-type", run.fine_tune_type]  # fmt: skip
        if data:
            command += ["--data", str(data)]
        if run.iters:
            command += ["--iters", str(run.iters)]
        if run.suite == "sweep":
            command += [
                "--fixed-length",
                str(run.length),
                "--batch-size",
                str(run.batch),
                "--max-seq-length",
                str(run.length + 1),
            ]
        command += _flags(run.overrides) + self.train_flags
        _append(partial, self._header(run, config, command))
        log = self._log(run)
        tic = time.perf_counter()
        try:
            with open(log, "w") as handle:
                proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=_child_env())
                rc = self._wait(proc, self._watch(proc), handle)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return self._finish(partial, rc, time.perf_counter() - tic, log.read_text(errors="replace"), config)

    def _peer(self, run: Run, partial: Path) -> str:
        setup = self.setups[run.model]
        config = self._config(run)
        data = self.data.get(run.data_key) or _shipped_data()
        log = self._log(run)
        work = Path(tempfile.mkdtemp(prefix="peer-run-", dir=self.cache))
        try:
            try:
                export_weights(setup, log.with_suffix(".export.log"), _child_env())
            except subprocess.CalledProcessError as error:  # a result too: recorded, not raised
                _append(partial, self._header(run, config, [str(a) for a in error.cmd]))
                return self._finish(
                    partial, error.returncode, 0.0, log.with_suffix(".export.log").read_text(errors="replace"), config
                )
            yaml_path = work / "lora.yaml"
            peer_config = mlx_lm_config(config, run, data)
            yaml_path.write_text(json.dumps(peer_config))  # JSON is YAML
            command = [sys.executable, "-m", "flashtune.bench.peer", "--model", str(setup.hf_folder), "--train",
                       "--data", str(data), "--iters", str(config.iters), "--batch-size", str(config.batch_size),
                       "--num-layers", str(config.lora_layers), "--adapter-path", str(work / "adapters"), "-c", str(yaml_path)]  # fmt: skip
            _append(partial, self._header(run, config, command))
            tic = time.perf_counter()
            stamps, out = [], []
            with open(log, "w") as handle:
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=handle, text=True, env=_child_env())
                watch = self._watch(proc)
                for line in proc.stdout:  # read as lines arrive: report times seen from this side too
                    out.append(line)
                    if line.startswith(PREFIX):
                        stamps.append(time.perf_counter() - tic)
                handle.write("".join(out))
                rc = self._wait(proc, watch, handle)
            wall = time.perf_counter() - tic
        finally:
            shutil.rmtree(work, ignore_errors=True)
        train, val, info = parse_output("".join(out))
        if info:
            info.update(
                config=dict(config.to_dict(), mlx_lm=peer_config), tool=TOOL, dtype=config.dtype, seed=config.seed
            )
            _append(partial, info)
        for record in to_records(train, val, setup.label):
            _append(partial, record)
        extra = {"first_to_last_report_s": stamps[-1] - stamps[0] if len(stamps) > 1 else None}
        return self._finish(partial, rc, wall, log.read_text(errors="replace"), config, extra)

    def _hf_peft(self, run: Run, partial: Path) -> str:
        """transformers + PEFT on the weights and batches flashtune trains on (flashtune.bench.hf_peft)."""
        if self.hf is None:
            raise ValueError(
                f"{run.name}: no torch Python set up for {', '.join(HF_IMPLS)} (see flashtune.bench.hf_peft.check)"
            )
        setup, config, log = self.setups[run.model], self._config(run), self._log(run)
        data = self.data.get(run.data_key) or _shipped_data()
        work = Path(tempfile.mkdtemp(prefix="hf-peft-run-", dir=self.cache))
        try:
            try:
                export_weights(setup, log.with_suffix(".export.log"), _child_env())
                command = hf_peft.prepare_run(setup, config, run.impl, data, self.hf, work, partial)
            except (subprocess.CalledProcessError, ValueError, OSError) as error:  # a result too: recorded, not raised
                exported = log.with_suffix(".export.log")
                text = (
                    exported.read_text(errors="replace")
                    if isinstance(error, subprocess.CalledProcessError)
                    else f"{type(error).__name__}: {error}"
                )
                _append(partial, self._tool_header(run, config, [], HF_TOOL))
                return self._finish(partial, 1, 0.0, text, config)
            _append(partial, self._tool_header(run, config, command, HF_TOOL))
            tic = time.perf_counter()
            with open(log, "w") as handle:
                proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=hf_peft.child_env())
                rc = self._wait(proc, self._watch(proc), handle)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self._finish(partial, rc, time.perf_counter() - tic, log.read_text(errors="replace"), config)

    def _tool_header(self, run: Run, config, command: list[str], tool: str) -> dict:
        header = self._header(run, config, command)
        header["bench"]["tool"] = tool
        return header

    def _finish(self, partial: Path, rc: int, wall: float, log_text: str, config, extra: dict | None = None) -> str:
        lines = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
        steps = [r for r in lines if "iter" in r and not r.get("eval")]
        if not any(r.get("run_info") for r in lines):
            from flashtune import env

            _append(
                partial,
                env.run_info(
                    config.to_dict(),
                    dtype=config.dtype,
                    seed=config.seed,
                    note="written by the bench: the run ended before its own header",
                ),
            )
        ok = rc == 0 and steps and max(r["iter"] for r in steps) >= config.iters
        end = {
            "run_end": True,
            "status": "ok" if ok else "failed",
            "returncode": rc,
            "process_wall_s": wall,
            **(extra or {}),
        }
        if not ok:
            end["error"] = _error_summary(log_text)
            end["oom"] = is_out_of_memory(log_text)
        _append(partial, end)
        return end["status"]

    def _log(self, run: Run) -> Path:
        path = self.results / "logs" / run.relpath.with_suffix(".log")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def _is_text_data(folder: Path | None) -> bool:
    """Whether a dataset is in the ``text`` format (its first line has a "text" key)."""
    try:
        with open(Path(folder) / "train.jsonl") as handle:
            first = next(line for line in handle if line.strip())
        return "text" in json.loads(first)
    except (OSError, StopIteration, ValueError, TypeError):
        return False


def mlx_lm_config(config, run: Run, data: Path | None = None) -> dict:
    """mlx_lm lora's -c config with flashtune's fine-tuning type, LoRA, optimizer, schedule, eval and length settings.

    Prompt masking is passed on except for ``text`` data, which has no prompt (flashtune ignores
    the flag there; mlx_lm refuses it).
    """
    peak, warm = config.learning_rate, config.warmup
    return {
        "fine_tune_type": config.fine_tune_type,
        "lora_parameters": {"rank": config.lora_rank, "scale": config.lora_scale, "dropout": config.lora_dropout},
        "optimizer": "adamw", "optimizer_config": {"adamw": {"weight_decay": config.weight_decay}},
        "learning_rate": peak,
        "lr_schedule": {"name": "cosine_decay", "warmup": warm, "warmup_init": 0.0,
                        "arguments": [peak, max(config.iters - warm, 1), peak * config.min_lr_ratio]},
        "mask_prompt": config.mask_prompt and not _is_text_data(data), "seed": config.seed, "grad_checkpoint": config.grad_checkpoint or run.impl == PEER_GC,
        "steps_per_report": 1, "steps_per_eval": config.steps_per_eval or config.iters,
        "val_batches": config.val_batches, "save_every": config.iters,
        "max_seq_length": (run.length + 1) if run.suite == "sweep" else (config.max_seq_length or 2048),
    }  # fmt: skip


def _flags(overrides: dict[str, Any]) -> list[str]:
    """``flashtune train`` flags setting these config values (``--pack``, ``--learning-rate 0.0004``, ...)."""
    flags = []
    for key, value in overrides.items():
        name = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:  # repr: a float keeps every digit, so the run's config holds exactly the planned value
            flags += [f"--{name}", repr(value) if isinstance(value, float) else str(value)]
    return flags


def _shipped_data() -> Path:
    from flashtune import data

    return data.default_dataset_dir()


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _one_line(path: Path) -> str:
    from flashtune.bench.report import summarize_run

    s = summarize_run(path)
    if s["status"] != "ok":
        return f"FAILED ({'out of memory' if s.get('oom') else 'error'}): {str(s.get('error', '')).splitlines()[-1:]}"
    peak = "unknown" if s["peak_mem_gb"] is None else f"{s['peak_mem_gb']:.2f} GB"  # torch on a CPU reports none
    return (
        f"{s['iters']} it in {s['total_wall_s']:.1f} s (process {s['process_wall_s']:.0f} s), steady "
        f"{s['steady_tokens_per_s']:,.0f} tok/s, peak {peak}, loss {s['final_loss']:.3f}"
    )
