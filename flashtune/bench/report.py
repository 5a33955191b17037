"""Markdown tables (and PNG plots) from benchmark JSONL files alone."""

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple


def read_jsonl(path: Path) -> Tuple[dict, List[dict]]:
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


def attention_table(records: List[dict]) -> str:
    """One row per (shape, implementation), with speedups against ``baseline`` and ``demo``."""
    by_shape: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        key = (r["tag"], r["batch"], r["n_heads"], r["n_kv_heads"], r["length"], r["head_dim"])
        by_shape.setdefault(key, {})[r["impl"]] = r
    rows = []
    for key, impls in by_shape.items():
        base = impls.get("baseline", {})
        demo = impls.get("demo", {})
        for name, r in impls.items():
            ok = r.get("status") == "ok"
            speed = lambda ref: (  # noqa: E731
                ref["fwdbwd_ms"] / r["fwdbwd_ms"] if ok and ref.get("status") == "ok" else None
            )
            rows.append([
                key[0], f"{key[1]}×{key[4]}", f"{key[2]}/{key[3]}", key[5], name,
                r.get("fwd_ms") if ok else r.get("status"), r.get("fwdbwd_ms"),
                r.get("fwd_tflops"), r.get("fwdbwd_tflops"), speed(base), speed(demo),
                r.get("extra_mb"), r.get("rel_err"),
            ])
    columns = [
        "shape", "B×L", "Hq/Hkv", "D", "impl", "fwd ms", "fwd+bwd ms", "fwd TFLOP/s",
        "fwd+bwd TFLOP/s", "fwd+bwd speedup vs baseline", "vs demo", "fwd+bwd extra MB", "rel err",
    ]
    return markdown_table(columns, rows)
