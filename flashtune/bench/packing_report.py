"""The packing suite's part of report.md: one pass per run, packed against padded and mlx_lm.lora, per model and dataset."""

from pathlib import Path
from typing import Any

from flashtune.bench.packing import WARMUP_SHARE, describe
from flashtune.bench.peer import TOOL

TEXT_KINDS = ("variable", "chat")  # text data: every target is in the loss, so loss tokens = filled slots


def row_name(s: dict[str, Any]) -> str:
    """``practical packed``, ``practical padded`` or ``mlx_lm.lora``."""
    variant = s["bench"].get("variant")
    return f"{s['impl']} {variant}" if variant else s["impl"]


def pass_numbers(s: dict[str, Any]) -> dict[str, float | None]:
    """Trained and processed tokens/s over the pass and the share of slots filled, from a run summary.

    mlx_lm.lora records no filled slots; on text data its loss tokens are exactly those.
    """
    wall, slots = s.get("total_wall_s"), s.get("slots")
    filled = s.get("input_tokens")
    if filled is None and (s["bench"].get("data_meta") or {}).get("kind") in TEXT_KINDS:
        filled = s.get("tokens")
    return {
        "trained": s.get("tokens_per_s"),
        "processed": slots / wall if slots and wall else None,
        "fill": filled / slots if filled is not None and slots else None,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ordered(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each implementation packed then padded, in the report's implementation order, mlx_lm.lora last."""
    from flashtune.bench.report import IMPL_ORDER

    def rank(s):
        return IMPL_ORDER.index(s["impl"]) if s["impl"] in IMPL_ORDER else len(IMPL_ORDER), s["bench"].get(
            "variant"
        ) != "packed"

    return sorted(runs, key=rank)


def pass_table(runs: list[dict[str, Any]]) -> str:
    """One model and dataset: a row per run, speedups in trained tokens/s."""
    from flashtune.bench.report import markdown_table

    ok = {row_name(s): s for s in runs if s["status"] == "ok"}
    peer = pass_numbers(ok[TOOL])["trained"] if TOOL in ok else None
    rows = []
    for s in ordered(runs):
        good = s["status"] == "ok"
        n = pass_numbers(s) if good else {}
        padded = ok.get(f"{s['impl']} padded") if s["bench"].get("variant") == "packed" else None
        rows.append([
            row_name(s), "ok" if good else ("failed: out of memory" if s.get("oom") else "failed"), s["iters"] or None,
            s.get("total_wall_s") if good else None, s.get("process_wall_s"), n.get("trained"), n.get("processed"),
            n.get("fill"), s.get("peak_mem_gb") if good else None, s.get("final_val_loss") if good else None,
            s["bench"].get("lr_scale"), _ratio(n.get("trained"), pass_numbers(padded)["trained"] if padded else None),
            _ratio(n.get("trained"), peer) if s["impl"] != TOOL else None,
        ])  # fmt: skip
    columns = ["run", "status", "steps", "pass s", "process s", "trained tok/s", "processed tok/s", "slots filled",
               "peak GB", "val loss after", "lr ×", "vs padded", f"vs {TOOL}"]  # fmt: skip
    return markdown_table(columns, rows)


def notes(runs: list[dict[str, Any]]) -> list[str]:
    """How the suite's runs are matched and what each column means."""
    lines = [
        "Each run trains one pass (one epoch) over the same training examples, with the same LoRA, AdamW and "
        "learning rate per token (`flashtune/bench/packing.py`). **packed**: `flashtune train --pack`, rows of "
        "`--pack-length` slots (the longest example rounded up to the device's length granularity) holding several "
        "examples, kept apart by per-document attention; **padded**: flashtune's length-sorted batches padded to "
        f"planned lengths; **{TOOL}**: `mlx_lm lora`, padded its own way, for the padded pass's iterations at the "
        "same batch size. A packed step holds more examples, so a packed pass has fewer steps: the schedule keeps its "
        f"shape (linear warm-up over the first {WARMUP_SHARE:.0%} of the pass, cosine to the same fraction of the "
        "peak) and the packed runs' peak learning rate is the recipe's times padded steps / packed steps (**lr ×**, "
        "also in each run's bench header).",
        "**pass s** sums the pass's step times (compiles included, validation excluded); **trained tok/s** is loss "
        "tokens / pass s; **processed tok/s** counts every slot (B × L of each step, padding included); **slots "
        f"filled** is the share of slots holding example tokens ({TOOL}: its loss tokens, which on text data are "
        "exactly those); **val loss after** is the validation loss after the pass, on unpacked batches of the whole "
        f"valid split for flashtune's runs ({TOOL} picks its own batches); **vs padded** and **vs {TOOL}** compare "
        "trained tok/s.",
    ]
    if any((s["run_info"].get("device") or {}).get("backend") == "cuda" for s in runs if s["impl"] == "poc"):
        lines.append("On CUDA `poc`'s kernels do not read document ids yet: its packed rows run `practical`.")
    if any((s["run_info"].get("device") or {}).get("backend") == "cpu" for s in runs):
        lines.append("Measured on a CPU, where a step's time grows with its slots, padding included: packing gains about "
                     "the padding it removes (compare slots filled). On a GPU a step of up to 4×1024 tokens is bound by "
                     "the host dispatching its kernels (docs/benchmarks.md), so fewer, fuller steps gain more.")  # fmt: skip
    if any(s["suite"] == "packing-cold" for s in runs):
        lines.append("Each run follows a warm-up run of the same settings in the same call (`cold/`, not shown), so "
                     "MLX's kernel cache holds every kernel the measured run uses.")  # fmt: skip
    return lines


def sections(runs: list[dict[str, Any]], results: Path) -> list[str]:
    """The packing part of report.md: notes, goals, then a table and a plot per model and dataset."""
    from flashtune.bench import plots
    from flashtune.bench.goals import packing_goals
    from flashtune.bench.report import markdown_table

    measured = [s for s in runs if s["suite"] == "packing"]
    if not measured:
        return []
    lines = ["## Packing: one pass, packed vs padded", ""] + ["- " + n for n in notes(runs)] + [""]
    goals = packing_goals(measured)
    if goals:
        lines += ["### Packing goals", "", "Set for the GPU models (TinyLlama-1.1B, Qwen2.5-1.5B); shown for every model "
                  "measured, from runs of one call.", "", markdown_table(["model", "dataset", "target", "measured", "goal", "met"], goals), ""]  # fmt: skip
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for s in measured:
        groups.setdefault((s["model"], s["bench"].get("dataset")), []).append(s)
    for (model, dataset), group in groups.items():
        label, bench = group[0]["label"], group[0]["bench"]
        tag = f"packing-{model.lower().replace('/', '-')}-{dataset}"
        png = plots.packing_speed(
            ordered(group), results / f"{tag}.png", f"{label}, {dataset}: trained tokens/s over one pass"
        )
        lines += [f"### {label}: {dataset}", "", f"data: {describe(bench.get('data_meta'))}; {bench.get('batch')} rows per step; "
                  f"recipe `{Path(str(bench.get('recipe'))).name}`", "", pass_table(group), "", f"![trained tokens/s]({png.name})", ""]  # fmt: skip
        failed = [s for s in group if s["status"] != "ok"]
        lines += [f"- {row_name(s)} failed: `{(s.get('error') or '').splitlines()[-1:] or ['?']}`" for s in failed] + (
            [""] if failed else []
        )
    return lines
