"""Markdown from the attention benchmark's records (attention.jsonl): the table and a padding note."""

from flashtune.bench.report import markdown_table


def attention_table(records: list[dict]) -> str:
    """One row per (shape, implementation), with speedups against ``baseline``, ``demo``, ``anchor``.

    Speedups are reference fwd+bwd time / this row's; ``anchor`` is bare fused SDPA, so files
    from before it was measured show "–" in that column.
    """
    by_shape: dict[tuple, dict[str, dict]] = {}
    for r in records:
        key = (r["tag"], r["batch"], r["n_heads"], r["n_kv_heads"], r["length"], r["head_dim"])
        by_shape.setdefault(key, {})[r["impl"]] = r
    rows = []
    for key, impls in by_shape.items():
        base = impls.get("baseline", {})
        demo = impls.get("demo", {})
        anchor = impls.get("anchor", {})
        for name, r in impls.items():
            ok = r.get("status") == "ok"

            def speed(ref, r=r, ok=ok):
                return ref["fwdbwd_ms"] / r["fwdbwd_ms"] if ok and ref.get("status") == "ok" else None

            rows.append(
                [
                    key[0],
                    f"{key[1]}×{key[4]}",
                    f"{key[2]}/{key[3]}",
                    key[5],
                    name,
                    r.get("fwd_ms") if ok else r.get("status"),
                    r.get("fwdbwd_ms"),
                    r.get("fwd_tflops"),
                    r.get("fwdbwd_tflops"),
                    speed(base),
                    speed(demo),
                    speed(anchor),
                    r.get("extra_mb"),
                    r.get("rel_err"),
                ]
            )
    columns = [
        "shape",
        "B×L",
        "Hq/Hkv",
        "D",
        "impl",
        "fwd ms",
        "fwd+bwd ms",
        "fwd TFLOP/s",
        "fwd+bwd TFLOP/s",
        "fwd+bwd speedup vs baseline",
        "vs demo",
        "vs anchor",
        "fwd+bwd extra MB",
        "rel err",
    ]
    return markdown_table(columns, rows)


def demo_length_note(records: list[dict], lengths: tuple[int, int] = (1000, 1024)) -> str:
    """demo's fwd+bwd time per token at L=1000 over that at L=1024, per shape tag.

    The padding target: a length just short of a multiple of 128 should cost no more per token
    (ratio <= 1). Returns "" when no tag has demo ok at both lengths.
    """
    short, long = lengths
    per_token: dict[str, dict[int, float]] = {}
    for r in records:
        if r.get("impl") == "demo" and r.get("status") == "ok" and r["length"] in lengths:
            per_token.setdefault(r["tag"], {})[r["length"]] = r["fwdbwd_ms"] / (r["batch"] * r["length"])
    ratios = [f"{tag} {at[short] / at[long]:.2f}" for tag, at in per_token.items() if len(at) == 2]
    return f"demo L={short} vs {long} per token: {', '.join(ratios)}" if ratios else ""
