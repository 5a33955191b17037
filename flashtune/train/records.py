"""Per-iteration training records (JSONL) and the run summary computed from them.

One object per line: a ``run_info`` header (versions, git sha, device, config, dtype, seed),
then per iteration ``iter, wall_s, tokens, tokens_per_s, loss, lr, peak_mem_gb, attn, model``
plus ``shape`` (B, L), ``padded_tokens``, ``world_size`` and ``warmup`` (True when the step
compiled a new batch shape: kept and flagged, never dropped), and ``{"eval": true, ...}``
records for validation (their time is not in any ``wall_s``).
"""

import json
import statistics
from pathlib import Path
from typing import Any


class RecordWriter:
    """Appends JSON records to a file, one per line, flushed as they come."""

    def __init__(self, path: Path | None, enabled: bool = True):
        self.path = Path(path) if path else None
        self._file = None
        if self.path and enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        if self._file:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def read(path: Path) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _last_per_iteration(records: list[dict[str, Any]], evaluations: bool) -> list[dict[str, Any]]:
    """Training-step (or evaluation) records in iteration order. A resumed run appends to the
    same file: the last record of each iteration wins."""
    by_iter = {r["iter"]: r for r in records if "iter" in r and bool(r.get("eval")) == evaluations}
    return [by_iter[i] for i in sorted(by_iter)]


def training_steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-step records in iteration order (no evaluations), last record per iteration."""
    return _last_per_iteration(records, evaluations=False)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of one run: wall time (compile included), median step, tokens/s, memory, losses."""
    steps = training_steps(records)
    evals = _last_per_iteration(records, evaluations=True)
    if not steps:
        return {"iters": 0}
    steady = [r for r in steps if not r.get("warmup")] or steps
    total_wall = sum(r["wall_s"] for r in steps)
    tokens = sum(r["tokens"] for r in steps)
    processed = sum(r.get("padded_tokens", 0) for r in steps)
    filled = sum(r.get("input_tokens", 0) for r in steps)
    tail = steps[-10:]
    return {
        "iters": len(steps),
        "total_wall_s": total_wall,
        "warmup_steps": sum(1 for r in steps if r.get("warmup")),
        "warmup_wall_s": sum(r["wall_s"] for r in steps if r.get("warmup")),
        "median_step_s": statistics.median(r["wall_s"] for r in steady),
        "tokens_per_s": tokens / total_wall if total_wall else 0.0,
        "processed_tokens_per_s": processed / total_wall if total_wall else 0.0,
        "documents": sum(r.get("documents", 0) for r in steps),
        # Packing efficiency: the share of the steps' B x L slots that hold example tokens.
        "slot_fill": filled / processed if filled and processed else None,
        "steady_tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "peak_mem_gb": max(r["peak_mem_gb"] for r in steps),
        "first_loss": steps[0]["loss"],
        "final_loss": statistics.fmean(r["loss"] for r in tail),
        "first_val_loss": evals[0]["val_loss"] if evals else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    if not summary.get("iters"):
        return "no iterations recorded"
    val = ""
    if summary["final_val_loss"] is not None:
        val = f", validation loss {summary['first_val_loss']:.3f} -> {summary['final_val_loss']:.3f}"
    packing = (
        f"{summary['documents']:,} examples, {100 * summary['slot_fill']:.0f}% of slots filled; "
        if summary.get("slot_fill")
        else ""
    )
    return (
        f"{summary['iters']} iteration{'s' * (summary['iters'] != 1)} in {summary['total_wall_s']:.1f} s "
        f"({summary['warmup_steps']} compile/warm-up steps, {summary['warmup_wall_s']:.1f} s); "
        f"median step {1e3 * summary['median_step_s']:.0f} ms; "
        f"{summary['processed_tokens_per_s']:,.0f} tokens/s processed (padding included), "
        f"{summary['tokens_per_s']:,.0f} trained (loss tokens), {summary['steady_tokens_per_s']:,.0f} trained steady; "
        f"peak memory {summary['peak_mem_gb']:.2f} GB; {packing}"
        f"train loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}{val}"
    )
