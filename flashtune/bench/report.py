"""Markdown tables (and PNG plots) from benchmark JSONL files alone."""

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flashtune.bench.goals import targets_table
from flashtune.bench.hf_peft import HF_IMPLS, HF_TOOL, report_note
from flashtune.bench.packing_report import sections as packing_sections


def read_jsonl(path: Path) -> tuple[dict, list[dict]]:
    """Returns (run_info header or {}, records) of one JSONL results file."""
    header, records = {}, []
    with open(path) as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if record.get("run_info"):
                    header = record
                else:
                    records.append(record)
    return header, records


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def describe_header(header: dict) -> str:
    device = header.get("device", {})
    return (
        f"Device: {device.get('name')} ({device.get('backend')}); mlx {header.get('mlx')}, "
        f"mlx-lm {header.get('mlx_lm')}, flashtune {header.get('flashtune')} "
        f"(git {header.get('git_sha')}); dtype {header.get('dtype')}; {header.get('time')}"
    )


# --- fine-tuning runs (flashtune.bench.finetune) ------------------------------------------------

IMPL_ORDER = ("baseline", "practical", "demo", "poc", "mlx_lm.lora", *HF_IMPLS)
KIND_WORDS = {"lora": "LoRA", "dora": "DoRA", "full": "full fine-tuning"}  # by fine_tune_type


def kinds(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (model, fine_tune_type) pairs of ``runs`` in order of first appearance."""
    return list(dict.fromkeys((s["model"], s["fine_tune_type"]) for s in runs))


def named(model: str, kind: str) -> str:
    """The model as tables name it: with its fine-tuning type unless LoRA."""
    return model if kind == "lora" else f"{model} ({KIND_WORDS.get(kind, kind)})"


def _order(impl: str) -> int:
    return IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)


def read_run(path: Path) -> dict[str, Any]:
    """One run's JSONL split into its parts: bench header, run_info, steps, evals, end record."""
    parts: dict[str, Any] = {"path": str(path), "bench": {}, "run_info": {}, "steps": {}, "evals": {}, "end": {}}
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            r = json.loads(line)
            if "bench" in r:
                parts["bench"] = r["bench"]
            elif r.get("run_info"):
                parts["run_info"] = r
            elif r.get("run_end") or r.get("status"):
                parts["end"] = r
            elif r.get("eval"):
                parts["evals"][r["iter"]] = r
            elif "iter" in r:
                parts["steps"][r["iter"]] = r  # a resumed run appends: the last record of an iteration wins
    parts["steps"] = [parts["steps"][k] for k in sorted(parts["steps"])]
    parts["evals"] = [parts["evals"][k] for k in sorted(parts["evals"])]
    return parts


def summarize_run(path: Path) -> dict[str, Any]:
    """Totals of one run from its JSONL alone (tools reporting per window included).

    ``total_wall_s`` sums the step times (compile included, evaluation excluded: both trainers
    time the step and its ``mx.eval`` only); ``steady_tokens_per_s`` is the median per-iteration
    tokens/s over iterations not flagged as compiling a new batch shape.
    """
    run = read_run(Path(path))
    bench, steps, end = run["bench"], run["steps"], run["end"]
    out = {
        "path": str(path), "suite": bench.get("suite"), "model": bench.get("model"), "label": bench.get("label", bench.get("model")),
        "impl": bench.get("impl") or (steps[0]["attn"] if steps else None), "length": bench.get("length"), "batch": bench.get("batch"),
        "weights": bench.get("weights"), "tokenizer": bench.get("tokenizer"), "bench": bench, "run_info": run["run_info"],
        "status": end.get("status", "ok" if steps else "failed"), "error": end.get("error"), "oom": end.get("oom"),
        "process_wall_s": end.get("process_wall_s"), "first_to_last_report_s": end.get("first_to_last_report_s"),
        "iters": steps[-1]["iter"] if steps else 0, "fine_tune_type": bench.get("fine_tune_type", "lora"),
    }  # fmt: skip
    if not steps:
        return out
    per_iter, per_iter_steady = [], []
    series = []
    for r in steps:
        first, last = r.get("window", [r["iter"], r["iter"]])
        n = last - first + 1
        series.append((first, last, r["wall_s"] / n, bool(r.get("warmup"))))
        per_iter += [r["wall_s"] / n] * n
        if not r.get("warmup"):
            per_iter_steady += [r["wall_s"] / n] * n
    steady = [r for r in steps if not r.get("warmup")] or steps
    total = sum(r["wall_s"] for r in steps)
    tokens = sum(r["tokens"] for r in steps)
    peaks = [r["peak_mem_gb"] for r in steps if r.get("peak_mem_gb") is not None]
    # Slots (B x L of every step, padding included) and the slots holding example tokens, where recorded.
    slots, filled = ([r.get(k) for r in steps] for k in ("padded_tokens", "input_tokens"))
    out.update(
        total_wall_s=total, tokens=tokens, tokens_per_s=tokens / total if total else 0.0,
        steady_tokens_per_s=statistics.median(r["tokens_per_s"] for r in steady),
        median_step_s=statistics.median(per_iter_steady or per_iter), first_step_s=series[0][2],
        warmup_steps=sum(1 for r in steps if r.get("warmup")), peak_mem_gb=max(peaks) if peaks else None,
        final_loss=statistics.fmean(r["loss"] for r in steps[-10:]),
        final_val_loss=run["evals"][-1]["val_loss"] if run["evals"] else None,
        slots=None if None in slots else sum(slots), input_tokens=None if None in filled else sum(filled),
        series=series, losses=[(r["iter"], r["loss"]) for r in steps],
    )  # fmt: skip
    return out


def collect(results: Path) -> list[dict[str, Any]]:
    """Summaries of every finished fine-tuning run under ``results`` (files with a bench header)."""
    out = []
    for path in sorted(Path(results).rglob("*.jsonl")):
        with open(path) as handle:
            first = handle.readline()
        if first.strip() and "bench" in json.loads(first):
            out.append(summarize_run(path))
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _status(s: dict[str, Any]) -> str:
    if s["status"] == "ok":
        return "ok"
    return "failed: out of memory" if s.get("oom") else "failed"


def main_table(runs: list[dict[str, Any]]) -> str:
    """The 100-iteration comparison of one model: one row per implementation, mlx_lm.lora and hf-peft."""
    ok = {s["impl"]: s for s in runs if s["status"] == "ok"}
    base, peer, hf = ok.get("baseline", {}), ok.get("mlx_lm.lora", {}), ok.get(HF_TOOL, {})
    rows = []
    for s in sorted(runs, key=lambda s: _order(s["impl"])):
        good = s["status"] == "ok"
        rows.append([
            s["impl"], _status(s), s["iters"] or None,
            s.get("total_wall_s") if good else None, s.get("process_wall_s"),
            1e3 * s["median_step_s"] if good else None, s.get("tokens_per_s") if good else None,
            s.get("steady_tokens_per_s") if good else None,
            _ratio(base.get("total_wall_s"), s.get("total_wall_s")) if good else None,
            _ratio(peer.get("total_wall_s"), s.get("total_wall_s")) if good else None,
            _ratio(hf.get("total_wall_s"), s.get("total_wall_s")) if good else None,
            s.get("peak_mem_gb") if good else None, s.get("final_loss") if good else None,
            s.get("final_val_loss") if good else None,
        ])  # fmt: skip
    columns = [
        "impl", "status", "iters", "train time s", "process s", "median step ms", "tok/s",
        "steady tok/s", "speedup vs baseline", "speedup vs mlx_lm.lora", "speedup vs hf-peft", "peak GB", "final loss", "val loss",
    ]  # fmt: skip
    return markdown_table(columns, rows)


def cold_table(runs: list[dict[str, Any]]) -> str:
    """The warm-up runs (first use of each tool in the call): where MLX's kernel JIT cost shows."""
    rows = [[s["impl"], _status(s), s["bench"].get("order_in_call"), s["iters"] or None, s.get("first_step_s"),
             s.get("total_wall_s"), s.get("process_wall_s")] for s in sorted(runs, key=lambda s: _order(s["impl"]))]  # fmt: skip
    return markdown_table(
        ["impl", "status", "runs before it in the call", "iters", "first step s", "train time s", "process s"], rows
    )


def sweep_table(runs: list[dict[str, Any]]) -> str:
    """Sequence-length sweep of one model: steady tokens/s and peak memory, against baseline."""
    by_length: dict[int, dict[str, dict]] = {}
    for s in runs:
        by_length.setdefault(s["length"], {})[s["impl"]] = s
    rows = []
    for length in sorted(by_length):
        impls = by_length[length]
        base = impls.get("baseline", {}) if impls.get("baseline", {}).get("status") == "ok" else {}
        for name in sorted(impls, key=_order):
            s = impls[name]
            good = s["status"] == "ok"
            rows.append([
                length, f"{s['batch']}×{length}", name, _status(s), s.get("steady_tokens_per_s") if good else None,
                1e3 * s["median_step_s"] if good else None, s.get("peak_mem_gb") if good else None,
                _ratio(s.get("steady_tokens_per_s"), base.get("steady_tokens_per_s")) if good else None,
                _ratio(s.get("peak_mem_gb"), base.get("peak_mem_gb")) if good else None,
                s.get("first_step_s") if good else None,
            ])  # fmt: skip
    columns = ["L", "B×L", "impl", "status", "steady tok/s", "median step ms", "peak GB",
               "tok/s vs baseline", "peak vs baseline", "first step s (compile)"]  # fmt: skip
    return markdown_table(columns, rows)


def _data_note(s: dict[str, Any]) -> str:
    b = s["bench"]
    meta = b.get("data_meta") or {}
    recipe = f"recipe `{Path(str(b.get('recipe'))).name}`"
    if s["suite"] == "sweep":
        return f"data: per length L, text of exactly L+1 tokens (`fixed_length` L: one batch shape per run); {recipe}"
    if meta.get("kind") == "variable":
        what = f"text of {meta['lo']}-{meta['hi']} tokens ({meta['train']['examples']} training examples, seed {meta['seed']})"
    else:
        what = str(b.get("data"))
    return f"data: {what}; batch {b.get('batch')}; {recipe}"


def _notes(runs: list[dict[str, Any]], header: dict) -> list[str]:
    notes = [
        "**train time** sums each iteration's wall time (the step and its `mx.eval`; compile steps "
        "included, evaluation and checkpoints excluded), as both flashtune and mlx_lm.lora time it; "
        "**process s** is the whole subprocess (imports, model load, evaluation, saving). "
        "**steady tok/s** is the median per-iteration tokens/s over iterations that did not compile "
        "a new batch shape. Speedups compare train time. Tokens are the tokens in the loss (completion "
        "tokens only where prompts are masked), counted alike by both tools.",
        "mlx_lm.lora is `python -m mlx_lm lora` unchanged, started through `flashtune.bench.peer`, which "
        "only observes it (a JSON reporting callback beside its own, reporting every iteration, and the "
        "shape of each batch) and loads the same OpenBLAS as flashtune on CPUs. Same data, seed, fine-tuning type (lora, dora or full, "
        "as each section's title says), LoRA (layers, rank, scale), AdamW, warm-up + cosine schedule, evaluation batches. Its batching differs: "
        "it pads to a multiple of 32 (+1); flashtune pads to lengths planned per run (flashtune.data.shapes: multiples of 128 on CUDA, 32 elsewhere, merged where a compile costs more than the padding), and on GPUs dispatches each step before waiting for the previous one. Losses differ by batch order, and "
        "val loss by each tool's own pick of validation batches (mlx_lm takes the shortest first): compare them within a tool.",
    ]
    hf = [s for s in runs if s["impl"] in HF_IMPLS]
    if hf:
        notes.append(report_note(next((s["run_info"] for s in hf if s["run_info"].get("tool") == HF_TOOL), {})))
    for label, note in sorted({(s["label"], s.get("tokenizer")) for s in runs if s.get("label")}):
        weights = "random-init" in label
        line = f"**{label}**: " + (
            "architecture-exact random weights (timing does not depend on weight values)" if weights else "real weights"
        )
        notes.append(line + (f"; tokenizer: {note}" if note else ""))
    backend = (header.get("device") or {}).get("backend")
    if backend == "cpu":
        notes.append(
            "Measured on a CPU (MLX's CPU backend, float32, a shared machine: timings move by ±20% with "
            "other load). At these lengths attention is a small part of each step, so the implementations "
            "should be close; GPU results are the ones to read for speed."
        )
    shipped = [s for s in runs if s["suite"] == "main" and not (s["bench"].get("data_meta") or {}).get("kind")]
    if backend == "cpu" and shipped:
        iters = sorted({s["iters"] for s in shipped if s["status"] == "ok"})
        notes.append(
            f"This is the CPU default of `make reproduce-finetune`: {', '.join(sorted({s['label'] for s in shipped}))} "
            f"on the shipped dataset ({'/'.join(map(str, iters))} iterations, batch {shipped[0]['batch']}) and a "
            "small sweep, to fit in 15 minutes on 2 cores; `ARGS=--big` runs TinyLlama-1.1B and Qwen2.5-1.5B here too (slowly)."
        )
    return notes


def _sections(runs: list[dict[str, Any]], results: Path) -> list[str]:
    """The main comparison, its warm-up runs and the sweep of one model and fine-tuning type."""
    from flashtune.bench import plots

    model, kind = runs[0]["model"], runs[0]["fine_tune_type"]
    words, tag = KIND_WORDS.get(kind, kind), _slug(model) + ("" if kind == "lora" else f"-{kind}")
    lines = []
    mine = sorted((s for s in runs if s["suite"] == "main"), key=lambda s: _order(s["impl"]))
    if mine:
        label = mine[0]["label"]
        iters = max(s["iters"] for s in mine)
        png = plots.iteration_times(
            mine, results / f"iterations-{tag}.png", f"{label}: per-iteration wall time ({words})"
        )
        lines += [
            f"## {label}: {iters} {words} iterations",
            "",
            _data_note(mine[0]),
            "",
            main_table(mine),
            "",
            f"![per-iteration wall time]({png.name})",
            "",
        ]
        failed = [s for s in mine if s["status"] != "ok"]
        lines += [f"- {s['impl']} failed: `{(s.get('error') or '').splitlines()[-1:] or ['?']}`" for s in failed] + (
            [""] if failed else []
        )
    warm = sorted((s for s in runs if s["suite"] == "cold"), key=lambda s: _order(s["impl"]))
    if warm:
        lines += [
            "### Warm-up runs",
            "",
            "Each measured run above follows a warm-up run of the same tool in the same call (by default "
            "as long as the measured one), so MLX's on-disk kernel cache (CUDA kernels are JIT-compiled on first "
            "use) holds the kernels of every batch shape the measured run compiles, for every tool alike; the first "
            "run of a call on a fresh machine pays the one-time compilation.",
            "",
            cold_table(warm),
            "",
        ]
    swept = [s for s in runs if s["suite"] == "sweep"]
    if swept:
        label = swept[0]["label"]
        tok = plots.sweep(
            swept,
            "steady_tokens_per_s",
            "steady tokens/s",
            results / f"sweep-tokens-{tag}.png",
            f"{label}: tokens/s vs sequence length ({words})",
        )
        mem = plots.sweep(
            swept,
            "peak_mem_gb",
            "peak memory (GB)",
            results / f"sweep-memory-{tag}.png",
            f"{label}: peak memory vs sequence length ({words})",
        )
        tokens = {s["batch"] * s["length"] for s in swept}
        lines += [f"## {label}: {words} sequence-length sweep ({'/'.join(map(str, sorted(tokens)))} tokens per step)", "",
                  _data_note(swept[0]), "", sweep_table(swept), "", f"![tokens/s]({tok.name}) ![peak memory]({mem.name})", ""]  # fmt: skip
    return lines


def write_report(results: Path) -> Path:
    """Writes ``report.md`` and PNG plots into ``results`` from its JSONL files alone.

    Returns:
        The path of report.md.
    """
    from flashtune.bench import plots

    results = Path(results)
    runs = collect(results)
    header = next((s["run_info"] for s in runs if s.get("run_info")), {})
    lines = [f"# flashtune results: {results.name}", ""]
    if header:
        lines += [describe_header(header), ""]
    packed_suite = [s for s in runs if str(s["suite"]).startswith("packing")]
    runs = [s for s in runs if not str(s["suite"]).startswith("packing")]
    main = [s for s in runs if s["suite"] == "main"]
    sweep = [s for s in runs if s["suite"] == "sweep"]
    if runs:
        lines += ["- " + n for n in _notes(runs, header)] + [""]
    targets = targets_table(main, sweep)
    if targets:
        lines += [
            "## Performance goals",
            "",
            "flashtune's goals, set for TinyLlama-1.1B on an NVIDIA H100 (4×1024 and 1×4096 "
            "from the sweep; the time and steady tok/s goals from the main comparison); shown for every model measured. "
            "DoRA runs are held to half of mlx_lm.lora's DoRA time; full fine-tuning shows its ratio without a goal.",
            "",
            targets,
            "",
        ]
    for model, kind in kinds(runs):
        lines += _sections([s for s in runs if (s["model"], s["fine_tune_type"]) == (model, kind)], results)
    lines += packing_sections(packed_suite, results)
    attention = results / "attention.jsonl"
    if attention.is_file():
        from flashtune.bench.attention_report import attention_table, demo_length_note

        att_header, records = read_jsonl(attention)
        png = plots.attention_speedup(
            records, results / "attention-speedup.png", "Attention fwd+bwd speedup vs baseline"
        )
        lines += [
            "## Attention benchmark (attention.jsonl)",
            "",
            describe_header(att_header),
            "",
            attention_table(records),
            "",
        ]
        note = demo_length_note(records)
        lines += [note, ""] if note else []
        lines += [f"![attention speedup]({png.name})", ""]
    if len(lines) <= 4:
        lines += ["No results found (run `make reproduce-finetune` or `flashtune bench finetune`)."]
    out = results / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def _slug(model: str) -> str:
    return model.lower().replace("/", "-")
