"""PNG plots of benchmark results (matplotlib, Agg backend), drawn from run summaries alone."""

from pathlib import Path
from typing import Any

IMPL_STYLE = {  # one colour per implementation in every plot
    "baseline": "#7f7f7f", "practical": "#1f77b4", "demo": "#d62728", "poc": "#2ca02c", "mlx_lm.lora": "#ff7f0e",
    "hf-peft": "#8c564b", "hf-peft+compile": "#e377c2", "mlx_lm.lora+grad-checkpoint": "#bcbd22",
}  # fmt: skip


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = {"baseline": "s", "practical": "^", "demo": "o", "poc": "D", "mlx_lm.lora": "v", "hf-peft": "P", "hf-peft+compile": "X",
           "mlx_lm.lora+grad-checkpoint": "<"}  # fmt: skip


def _color(impl: str) -> str:
    return IMPL_STYLE.get(impl, "#9467bd")


def iteration_times(runs: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Wall time of every iteration, one line per implementation (a report window is drawn flat).

    Iterations that compiled a new batch shape are marked with dots.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for s in runs:
        if not s.get("series"):
            continue
        xs, ys, wx, wy = [], [], [], []
        for first, last, seconds, warm in s["series"]:
            xs += [first - 0.5, last + 0.5]
            ys += [1e3 * seconds] * 2
            if warm:
                wx.append((first + last) / 2)
                wy.append(1e3 * seconds)
        label = f"{s['impl']} ({s['total_wall_s']:.1f} s)"
        ax.plot(xs, ys, color=_color(s["impl"]), lw=1.3, label=label, drawstyle="steps-post")
        ax.plot(wx, wy, "o", color=_color(s["impl"]), ms=4)
    failed = [s["impl"] for s in runs if s["status"] != "ok"]
    if failed:
        ax.text(
            0.99, 0.02, "failed: " + ", ".join(failed), transform=ax.transAxes, ha="right", va="bottom", color="#d62728"
        )
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("wall time per iteration (ms, log)")
    ax.set_title(title + "\n(dots: iteration compiled a new batch shape)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves(losses: dict[str, list[float]], reference: str, path: Path, title: str) -> Path:
    """Training loss per iteration, one line per implementation, the reference drawn thicker."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for impl, curve in losses.items():
        ax.plot(
            range(1, len(curve) + 1), curve, label=impl, color=_color(impl), linewidth=2.2 if impl == reference else 1.2
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title(f"{title}: training loss per attention implementation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw_sweep(ax, runs: list[dict[str, Any]], key: str, ylabel: str, title: str, log: bool = False) -> None:
    """One sweep panel: ``key`` against length per implementation, failed runs as crosses on the x axis."""
    impls = sorted({s["impl"] for s in runs}, key=lambda i: list(IMPL_STYLE).index(i) if i in IMPL_STYLE else 99)
    lengths = sorted({s["length"] for s in runs})
    for impl in impls:
        points = sorted(((s["length"], s) for s in runs if s["impl"] == impl), key=lambda p: p[0])
        good = [(L, s[key]) for L, s in points if s["status"] == "ok" and s.get(key) is not None]
        bad = [L for L, s in points if s["status"] != "ok"]
        if good:
            ax.plot(*zip(*good), "-", marker=MARKERS.get(impl, "o"), color=_color(impl), label=impl, alpha=0.85)
        if bad:
            ax.plot(bad, [0] * len(bad), "x", color=_color(impl), ms=10, mew=2, clip_on=False)
    for L in lengths:  # name the failures: crosses of several implementations overlap
        failed = [
            f"{s['impl']}{' (OOM)' if s.get('oom') else ''}" for s in runs if s["length"] == L and s["status"] != "ok"
        ]
        if failed:
            ax.annotate(
                "failed:\n" + "\n".join(failed),
                (L, 0),
                xytext=(0, 14),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color="#d62728",
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(L) for L in lengths])
    values = [s[key] for s in runs if s["status"] == "ok" and s.get(key) is not None]
    if log:
        ax.set_yscale("log")
    elif values:
        ax.set_ylim(0, 1.12 * max(values))
    batches = {s["length"]: s.get("batch") for s in runs}
    ax.set_xlabel("sequence length (batch: " + ", ".join(f"{batches[L]}×{L}" for L in lengths) + ")", fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # not when every run failed
        ax.legend(fontsize=8)


def sweep(runs: list[dict[str, Any]], key: str, ylabel: str, path: Path, title: str, log: bool = False) -> Path:
    """``key`` (steady tokens/s or peak memory) against sequence length, one line per implementation.

    Failed runs (e.g. out of memory) are drawn as crosses on the x axis.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw_sweep(ax, runs, key, ylabel, title, log)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def context(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """`flashtune bench context` rows: peak GB and tokens/s against length, side by side."""
    plt = _pyplot()
    runs = [dict(r, batch=1, oom=r["status"] == "oom") for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    _draw_sweep(axes[0], runs, "peak_gb", "peak memory (GB)", f"{title}: peak memory")
    _draw_sweep(axes[1], runs, "tokens_per_s", "tokens/s (one sequence)", f"{title}: speed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attention_speedup(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Forward+backward speedup over ``baseline`` per shape and implementation (grouped bars).

    One panel per shape set (the seed grid, the model shapes); crosses mark failed runs.
    """
    plt = _pyplot()
    shapes: dict[tuple, dict[str, dict]] = {}
    for r in records:
        key = (r["tag"], r["batch"], r["n_heads"], r["n_kv_heads"], r["length"], r["head_dim"])
        shapes.setdefault(key, {})[r["impl"]] = r
    impls = sorted(
        {r["impl"] for r in records if r["impl"] != "baseline"},
        key=lambda i: list(IMPL_STYLE).index(i) if i in IMPL_STYLE else 99,
    )
    panels: dict[str, list[tuple]] = {}
    for key in shapes:
        panels.setdefault("seed grid" if key[0] == "seed" else "model shapes", []).append(key)
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 4.2 * len(panels)), squeeze=False)
    width = 0.8 / max(len(impls), 1)
    for ax, (name, keys) in zip(axes[:, 0], panels.items()):
        for j, impl in enumerate(impls):
            xs, ys, fails = [], [], []
            for i, key in enumerate(keys):
                base, r = shapes[key].get("baseline", {}), shapes[key].get(impl)
                if r is None:
                    continue
                x = i + (j - (len(impls) - 1) / 2) * width
                if r.get("status") == "ok" and base.get("status") == "ok":
                    xs.append(x)
                    ys.append(base["fwdbwd_ms"] / r["fwdbwd_ms"])
                else:
                    fails.append(x)
            ax.bar(xs, ys, width, color=_color(impl), label=impl)
            if fails:
                ax.plot(fails, [1] * len(fails), "x", color=_color(impl), ms=8, mew=2)
        ax.axhline(1.0, color="k", lw=0.8)
        labels = [f"{k[0] if name != 'seed grid' else ''} {k[1]}×{k[4]}\n{k[2]}/{k[3]}h d{k[5]}".strip() for k in keys]
        ax.set_xticks(
            range(len(keys)), labels, fontsize=6 if len(keys) > 14 else 7, rotation=90 if len(keys) > 14 else 0
        )
        ax.set_xlim(-0.6, len(keys) - 0.4)
        ax.set_yscale("log")
        ax.set_ylabel("fwd+bwd speedup vs baseline")
        ax.set_title(f"{title}: {name} (x: failed, or baseline failed)", fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def packing_speed(runs: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Trained tokens/s over one pass: per implementation packed and padded side by side, mlx_lm.lora alone.

    Packed bars are solid, padded bars hatched; a packed bar is labelled with its speedup over its
    padded run; crosses mark failed runs.
    """
    from flashtune.bench.packing_report import pass_numbers

    plt = _pyplot()
    impls = list(dict.fromkeys(s["impl"] for s in runs))
    fig, ax = plt.subplots(figsize=(1.6 * len(impls) + 3, 4.5))
    speed = {
        (s["impl"], s["bench"].get("variant")): (pass_numbers(s)["trained"] if s["status"] == "ok" else None)
        for s in runs
    }
    for x, impl in enumerate(impls):
        variants = [v for v in ("packed", "padded", None) if (impl, v) in speed]
        width = 0.8 / len(variants)
        for j, variant in enumerate(variants):
            at, value = x + (j - (len(variants) - 1) / 2) * width, speed[(impl, variant)]
            if value is None:
                ax.plot([at], [0], "x", color=_color(impl), ms=10, mew=2, clip_on=False)
                continue
            ax.bar([at], [value], width * 0.95, color=_color(impl), alpha=0.45 if variant == "padded" else 0.9,
                   hatch="//" if variant == "padded" else None, edgecolor="black", linewidth=0.5)  # fmt: skip
            padded = speed.get((impl, "padded"))
            text = f"{value:,.0f}" + (f"\n{value / padded:.2f}×" if variant == "packed" and padded else "")
            ax.annotate(
                text, (at, value), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7
            )
    ax.set_xticks(range(len(impls)), impls)
    ax.set_ylabel("trained tokens/s (loss tokens / pass time)")
    ax.set_title(title + "\n(solid: packed, hatched: padded; label: packed vs padded)", fontsize=10)
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
