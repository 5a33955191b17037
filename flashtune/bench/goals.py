"""flashtune's performance goals, checked against the fine-tuning comparison's run summaries (flashtune.bench.report)."""

from collections.abc import Sequence
from typing import Any

from flashtune.bench.hf_peft import HF_IMPLS, HF_TOOL
from flashtune.bench.peer import TOOL

FLASHTUNE_IMPLS = ("baseline", "practical", "demo", "poc")
# Per peer tool: its implementations, best flashtune time / the peer's per fine-tuning type (none:
# the ratio is shown without a goal), and the least steady tokens/s multiple (LoRA only).
PEER_GOALS = (
    (TOOL, (TOOL,), {"lora": 1 / 3, "dora": 1 / 2}, 1.5),
    (HF_TOOL, HF_IMPLS, {"lora": 1 / 2}, 2.0),
)


def _ok(runs, **match) -> dict[str, dict[str, Any]]:
    return {s["impl"]: s for s in runs if s["status"] == "ok" and all(s.get(k) == v for k, v in match.items())}


def _failed(runs, impl, **match) -> bool:
    return any(s["impl"] == impl and s["status"] != "ok" and all(s.get(k) == v for k, v in match.items()) for s in runs)


def _yes(met: bool) -> str:
    return "yes" if met else "no"


def sweep_goals(model: str, runs: list[dict[str, Any]]) -> list[list]:
    """demo vs baseline at 1024, and the best of demo/poc vs baseline at 4096 (speed and memory)."""
    rows = []
    at = _ok(runs, length=1024)
    if "demo" in at and "baseline" in at:
        r = at["demo"]["steady_tokens_per_s"] / at["baseline"]["steady_tokens_per_s"]
        rows.append(
            [model, f"demo tok/s vs baseline at {at['demo']['batch']}×1024", f"{r:.2f}×", "≥ 1.3×", _yes(r >= 1.3)]
        )
    L = 4096
    if any(s["length"] == L for s in runs):
        at = _ok(runs, length=L)
        best = max((at[i] for i in ("demo", "poc") if i in at), key=lambda s: s["steady_tokens_per_s"], default=None)
        if best and "baseline" in at:
            r = best["steady_tokens_per_s"] / at["baseline"]["steady_tokens_per_s"]
            m = best["peak_mem_gb"] / at["baseline"]["peak_mem_gb"]
            rows.append(
                [
                    model,
                    f"best of demo/poc ({best['impl']}) tok/s vs baseline at {best['batch']}×{L}",
                    f"{r:.2f}×",
                    "≥ 2×",
                    _yes(r >= 2),
                ]
            )
            rows.append(
                [model, f"its peak memory vs baseline at {best['batch']}×{L}", f"{m:.2f}", "≤ 0.5", _yes(m <= 0.5)]
            )
        elif best and _failed(runs, "baseline", length=L):
            rows.append(
                [
                    model,
                    f"{best['impl']} vs baseline at {best['batch']}×{L}",
                    "baseline failed (out of memory?)",
                    "≥ 2×, ≤ 0.5 memory",
                    "yes",
                ]
            )
    return rows


def peer_goals(model: str, at: dict[str, dict[str, Any]], name: str, peers: Sequence[str], time_goal: float | None,
               speed_goal: float | None) -> list[list]:  # fmt: skip
    """Best flashtune against the best of a peer tool's runs: time for the run, and steady tokens/s.

    Args:
        model: the model as the table names it.
        at: the model's finished main-suite runs (one fine-tuning type) by implementation.
        name: the peer tool ("mlx_lm.lora", "hf-peft").
        peers: its implementations (hf-peft: eager and torch.compile; the faster one counts).
        time_goal: the most flashtune's time may be as a fraction of the peer's (None: shown without a goal).
        speed_goal: the least flashtune's steady tokens/s may be as a multiple of the peer's (None: no row).
    """
    flash = [at[i] for i in FLASHTUNE_IMPLS if i in at]
    theirs = [at[i] for i in peers if i in at]
    if not flash or not theirs:
        return []
    best, peer = min(flash, key=lambda s: s["total_wall_s"]), min(theirs, key=lambda s: s["total_wall_s"])
    label = lambda s: s["impl"] if len(theirs) == 1 else f"best {name} ({s['impl']})"  # noqa: E731
    r = best["total_wall_s"] / peer["total_wall_s"]
    goal, met = ("–", "–") if time_goal is None else (f"≤ {time_goal:.2g}", _yes(r <= time_goal))
    rows = [
        [
            model,
            f"time for {best['iters']} iterations, best flashtune ({best['impl']}) / {label(peer)}",
            f"{r:.2f}",
            goal,
            met,
        ]
    ]
    if speed_goal is not None:
        fastest, peer_fastest = (max(runs, key=lambda s: s["steady_tokens_per_s"]) for runs in (flash, theirs))
        r = fastest["steady_tokens_per_s"] / peer_fastest["steady_tokens_per_s"]
        rows.append(
            [
                model,
                f"steady tok/s, best flashtune ({fastest['impl']}) vs {label(peer_fastest)}",
                f"{r:.2f}×",
                f"≥ {speed_goal:g}×",
                _yes(r >= speed_goal),
            ]
        )
    return rows


def targets_table(main: list[dict[str, Any]], sweep: list[dict[str, Any]]) -> str:
    """flashtune's performance goals, measured wherever the runs they need exist (set for TinyLlama on an H100).

    Each model and fine-tuning type is checked on its own; the steady tokens/s goals are LoRA's.
    """
    from flashtune.bench.report import kinds, markdown_table, named

    rows = []
    for model, kind in sorted(kinds(sweep)):
        rows += sweep_goals(
            named(model, kind), [s for s in sweep if (s["model"], s["fine_tune_type"]) == (model, kind)]
        )
    for model, kind in sorted(kinds(main)):
        at = _ok([s for s in main if (s["model"], s["fine_tune_type"]) == (model, kind)])
        for name, peers, time_goals, speed_goal in PEER_GOALS:
            rows += peer_goals(
                named(model, kind), at, name, peers, time_goals.get(kind), speed_goal if kind == "lora" else None
            )
    return markdown_table(["model", "target", "measured", "goal", "met"], rows) if rows else ""


# The packing suite, by dataset kind (meta.json's "kind"): least packed / padded trained tokens/s of
# the same implementation, and least best packed / mlx_lm.lora.
PACK_SPEED_GOALS = {"variable": 1.5, "chat": 2.5}
PACK_PEER_GOALS = {"chat": 5.0}


def _goal(ratio: float, goal: float | None) -> list:
    return [f"{ratio:.2f}×", f"≥ {goal:g}×" if goal else "–", _yes(ratio >= goal) if goal else "–"]


def packing_goals(runs: list[dict[str, Any]]) -> list[list]:
    """Rows [model, dataset, target, measured, goal, met] for the packing suite's measured runs.

    Per model and dataset: trained tokens/s of each implementation packed against padded, the best
    packed run against mlx_lm.lora, and the validation loss after the pass of the packed runs against
    the padded runs' mean, within the padded runs' spread (max - min over implementations and the
    reseeded padded runs, ``padded-seedN``: the run-to-run spread of padded training).
    """
    from flashtune.bench.packing_report import pass_numbers, row_name
    from flashtune.bench.report import named

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for s in runs:
        groups.setdefault((named(s["model"], s["fine_tune_type"]), s["bench"].get("dataset")), []).append(s)
    rows = []
    for (model, dataset), group in sorted(groups.items()):
        ok = {row_name(s): s for s in group if s["status"] == "ok"}
        kind = (group[0]["bench"].get("data_meta") or {}).get("kind")
        speed = {name: pass_numbers(s)["trained"] for name, s in ok.items()}
        packed = [n for n in ok if n.endswith(" packed")]
        for name in packed:
            impl = name.removesuffix(" packed")
            if f"{impl} padded" in speed:
                r = speed[name] / speed[f"{impl} padded"]
                rows.append(
                    [model, dataset, f"trained tok/s, {impl} packed vs padded", *_goal(r, PACK_SPEED_GOALS.get(kind))]
                )
        if packed and TOOL in speed:
            best = max(packed, key=speed.get)
            rows.append(
                [
                    model,
                    dataset,
                    f"trained tok/s, best packed ({best.removesuffix(' packed')}) vs {TOOL}",
                    *_goal(speed[best] / speed[TOOL], PACK_PEER_GOALS.get(kind)),
                ]
            )
        rows += _val_loss_goal(model, dataset, ok)
    return rows


def _val_loss_goal(model: str, dataset: str, ok: dict[str, dict[str, Any]]) -> list[list]:
    """The packed run farthest from the padded runs' mean validation loss, against the padded runs' spread."""
    padded = [
        s["final_val_loss"]
        for n, s in ok.items()
        if (n.endswith(" padded") or " padded-seed" in n) and s.get("final_val_loss") is not None
    ]
    packed = [
        s["final_val_loss"] for n, s in ok.items() if n.endswith(" packed") and s.get("final_val_loss") is not None
    ]
    if len(padded) < 2 or not packed:
        return []
    center, spread = sum(padded) / len(padded), max(padded) - min(padded)
    worst = max(packed, key=lambda v: abs(v - center))
    measured = f"{worst:.4f} vs {center:.4f} (Δ {worst - center:+.4f})"
    return [[model, dataset, "val loss after the pass, packed (farthest) vs padded mean", measured,
             f"Δ within ±{spread:.4f} (padded spread)", _yes(abs(worst - center) <= spread)]]  # fmt: skip
