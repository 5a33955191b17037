"""Do two attention implementations train alike? Loss curves of one model's runs, side by side.

    python scripts/loss_agreement.py RESULTS/main/TinyLlama-1.1B --reference demo --candidate poc [--warmups]

reads every ``<impl>.jsonl`` record file in the folder (100 iterations of the same data, seed
and model, one attention implementation each), compares each run's per-iteration training loss
with the reference run's, and writes a markdown table and a PNG of the curves. The noise
yardstick is the other implementations: all compute the same attention in bf16, so their
distance from the reference is what rounding alone does to a curve. The candidate trains
alike when its distance is no larger than the largest of theirs. With ``--warmups`` the warm-up
runs of the same call (``cold/<impl>.jsonl``: same data, seed and code) are compared too: each
implementation's warm-up run against its measured run is the run-to-run noise alone.
"""

import argparse
import statistics
import sys
from pathlib import Path

from flashtune.bench import plots
from flashtune.train import records


def read_runs(folder: Path) -> dict[str, list[float]]:
    """{implementation: per-iteration training loss} of every <impl>.jsonl in the folder."""
    return {
        path.stem: [r["loss"] for r in records.training_steps(records.read(path))]
        for path in sorted(folder.glob("*.jsonl"))
    }


def noise(runs: dict[str, list[float]], warmups: dict[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    """Distances of each warm-up run to its own measured run and to the reference run.

    Args:
        runs: {implementation: losses} of the measured runs.
        warmups: {implementation: losses} of their warm-up runs (same data, seed and code).
        reference: the implementation the others are compared with.

    Returns:
        {"<impl> (warm-up run) vs <other>": distances}, own run first.
    """
    pairs = {}
    for name, losses in warmups.items():
        for other in dict.fromkeys([name, reference]):
            if other in runs:
                pairs[f"{name} (warm-up run) vs {other}"] = distances(losses, runs[other])
    return pairs


def distances(losses: list[float], reference: list[float]) -> dict[str, float]:
    """Relative per-iteration distance |loss - ref| / ref: mean, max, and over the last 10."""
    if len(losses) != len(reference):
        raise ValueError(f"runs differ in length: {len(losses)} vs {len(reference)} iterations")
    rel = [abs(a - b) / abs(b) for a, b in zip(losses, reference)]
    return {
        "mean": statistics.fmean(rel),
        "max": max(rel),
        "last10": statistics.fmean(rel[-10:]),
        "final_loss": statistics.fmean(losses[-10:]),
    }


def compare(
    folder: Path, reference: str, candidate: str, runs: dict[str, list[float]] | None = None
) -> dict[str, dict[str, float]]:
    """Each run's distances to the reference run (``runs``: already read from ``folder``)."""
    runs = read_runs(folder) if runs is None else runs
    for name in (reference, candidate):
        if name not in runs:
            raise SystemExit(f"no {name}.jsonl in {folder}; runs there: {sorted(runs)}")
    return {name: distances(losses, runs[reference]) for name, losses in runs.items() if name != reference}


def verdict(table: dict[str, dict[str, float]], candidate: str) -> str:
    others = {n: d["mean"] for n, d in table.items() if n != candidate}
    if not others:
        return f"{candidate}: no other implementation to measure the noise with"
    noise = max(others.values())
    mine = table[candidate]["mean"]
    alike = "within" if mine <= noise else "outside"
    return (
        f"{candidate}'s mean distance {mine:.2%} is {alike} the bf16 noise band "
        f"(largest of {', '.join(f'{n} {d:.2%}' for n, d in others.items())})"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of <impl>.jsonl records of one model")
    parser.add_argument("--reference", default="demo")
    parser.add_argument("--candidate", default="poc")
    parser.add_argument("--out", type=Path, help="folder for loss-agreement.md/.png (default: the input)")
    parser.add_argument(
        "--warmups", action="store_true", help="also compare the warm-up runs in FOLDER/cold/ (run-to-run noise)"
    )
    args = parser.parse_args(argv)
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    runs = read_runs(args.folder)
    table = compare(args.folder, args.reference, args.candidate, runs)
    lines = [
        f"Training loss vs {args.reference}, per iteration ({args.folder})",
        "",
        "| run | final loss (last 10) | mean rel. distance | max | last 10 |",
        "|---|---|---|---|---|",
    ]
    for name, d in table.items():
        lines.append(f"| {name} | {d['final_loss']:.3f} | {d['mean']:.2%} | {d['max']:.2%} | {d['last10']:.2%} |")
    lines += ["", verdict(table, args.candidate)]
    if args.warmups:
        if not (args.folder / "cold").is_dir():
            raise SystemExit(f"--warmups: no warm-up runs in {args.folder / 'cold'}")
        lines += [
            "",
            "Warm-up runs (same data, seed and code as the measured runs):",
            "",
            "| pair | mean rel. distance | max | last 10 |",
            "|---|---|---|---|",
        ]
        for name, d in noise(runs, read_runs(args.folder / "cold"), args.reference).items():
            lines.append(f"| {name} | {d['mean']:.2%} | {d['max']:.2%} | {d['last10']:.2%} |")
    text = "\n".join(lines)
    print(text)
    (out / "loss-agreement.md").write_text(text + "\n")
    plots.loss_curves(runs, args.reference, out / "loss-agreement.png", args.folder.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
