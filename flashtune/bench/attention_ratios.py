"""Two attention implementations' time ratio over repeated benchmark runs, with the median.

    python scripts/attention_ratios.py run1 run2 run3 [--reference demo --candidate poc] [--out ratios.md]

reads each folder's ``attention.jsonl`` (written by ``flashtune bench attention``) and prints,
per layout and length, reference ms / candidate ms of the forward and of forward+backward in
every run and their median: above 1 the candidate is faster. One run of a sub-millisecond call
moves by 10-15 %, so a claim rests on the median of several runs.
"""

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

Key = tuple[str, int]  # (layout tag, sequence length)


def read_times(folder: Path) -> dict[tuple[str, int, str], dict]:
    """{(tag, length, impl): record} of one run's ok records."""
    path = Path(folder) / "attention.jsonl"
    if not path.is_file():
        raise SystemExit(f"{folder} has no attention.jsonl (write one with `flashtune bench attention --out`)")
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "impl" in record and record.get("status") == "ok":
            out[(record["tag"], record["length"], record["impl"])] = record
    return out


def ratios(folders: Sequence[Path], reference: str, candidate: str) -> dict[Key, list[tuple[float, float]]]:
    """{(tag, length): [(fwd ratio, fwd+bwd ratio) per run]}, reference time over candidate time."""
    table: dict[Key, list[tuple[float, float]]] = {}
    for folder in folders:
        times = read_times(folder)
        for (tag, length, impl), mine in times.items():
            ref = times.get((tag, length, reference))
            if impl == candidate and ref:
                pair = (ref["fwd_ms"] / mine["fwd_ms"], ref["fwdbwd_ms"] / mine["fwdbwd_ms"])
                table.setdefault((tag, length), []).append(pair)
    if not table:
        raise SystemExit(f"no shape has both {reference} and {candidate} in {[str(f) for f in folders]}")
    return table


def markdown(table: dict[Key, list[tuple[float, float]]], reference: str, candidate: str) -> str:
    """One row per (layout, length): each run's ratio and the median, forward and forward+backward."""
    name = f"{reference}/{candidate}"
    lines = [
        f"| layout | L | fwd {name} per run | median | fwd+bwd {name} per run | median |",
        "|---|---|---|---|---|---|",
    ]
    for (tag, length), runs in sorted(table.items()):
        cells = []
        for column in zip(*runs):
            cells += [" / ".join(f"{r:.2f}" for r in column), f"{statistics.median(column):.2f}"]
        lines.append(f"| {tag} | {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders holding one attention.jsonl each")
    parser.add_argument("--reference", default="demo")
    parser.add_argument("--candidate", default="poc")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    text = markdown(ratios(args.runs, args.reference, args.candidate), args.reference, args.candidate)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0
