"""`flashtune bench packed-attention`: what attention costs on packed rows, beside the same
documents unpacked.

Documents with chat-like lengths (log-normal around ``median`` tokens, clipped to
``[lo, length]``, seeded) are packed best-fit-decreasing into ``rows`` rows of ``length`` slots
(`flashtune.data.packing.pack_rows`, as ``flashtune train --pack`` does). Per implementation it
times the compiled forward+backward (as `flashtune.bench.attention` does) of:

- ``packed``: the packed rows with their document ids (``segments``), causal;
- ``dense``: the same rows without ids, causal over the whole row: what packing would cost if
  nothing skipped the pairs that the document mask removes;
- ``unpacked``: the same documents as padded training feeds them: sorted by length, ``rows`` to a
  batch, each batch padded to its longest rounded up to ``granularity``; the sum over batches.

``packed / unpacked`` at or under 1 means packing costs no more attention time than the same
documents run unpacked (equal trained tokens); ``packed / dense`` shows how much the ids let the
kernel skip. Output: JSONL (a run_info header, one record per implementation) and a table.
"""

import json
import math
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from flashtune import attention, env
from flashtune.bench import ATTENTION_REPEAT, ATTENTION_WARMUP
from flashtune.bench.attention import median_seconds
from flashtune.data.packing import pack_rows

DEFAULTS = dict(rows=4, length=4096, n_heads=32, n_kv_heads=4, head_dim=64, median=200, sigma=1.0, lo=16)
GRANULARITY = 128  # the trainer pads CUDA batches to multiples of 128 (flashtune.data.shapes)


def document_lengths(rows: int, length: int, median: int, sigma: float, lo: int, seed: int) -> list[int]:
    """Chat-like lengths drawn until they fill ``rows`` rows of ``length`` slots (best-fit-decreasing)."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while True:
        n = int(np.clip(round(median * math.exp(sigma * rng.standard_normal())), lo, length))
        if len(pack_rows([*lengths, n], length)) > rows:
            return lengths
        lengths.append(n)


def packed_ids(lengths: list[int], rows: int, length: int) -> mx.array:
    """int32 (rows, length): each row's documents numbered in placement order, -1 after them."""
    ids = np.full((rows, length), -1, dtype=np.int32)
    for r, members in enumerate(pack_rows(lengths, length)):
        start = 0
        for doc, i in enumerate(members):
            ids[r, start : start + lengths[i]] = doc
            start += lengths[i]
    return mx.array(ids)


def unpacked_batches(lengths: list[int], rows: int, granularity: int = GRANULARITY) -> list[tuple[int, int]]:
    """(batch size, padded length) of each batch when the documents are fed unpacked."""
    ordered = sorted(lengths)
    batches = [ordered[i : i + rows] for i in range(0, len(ordered), rows)]
    return [(len(b), -(-max(b) // granularity) * granularity) for b in batches]


def _fwdbwd_ms(fn, shape: tuple[int, int], heads: tuple[int, int], head_dim: int, dtype, segments, warmup, repeat):
    """Median ms of one compiled forward+backward of ``fn`` on random (B, L) inputs."""
    (batch, length), (n_heads, n_kv_heads) = shape, heads
    keys = mx.random.split(mx.random.key(batch * 100_003 + length), 4)
    q = mx.random.normal((batch, n_heads, length, head_dim), key=keys[0]).astype(dtype)
    k, v = (mx.random.normal((batch, n_kv_heads, length, head_dim), key=key).astype(dtype) for key in keys[1:3])
    d_out = mx.random.normal(q.shape, key=keys[3]).astype(dtype)
    extra = {} if segments is None else {"segments": segments}

    def objective(q, k, v, d_out):
        return (fn(q, k, v, scale=head_dim**-0.5, mask="causal", **extra) * d_out).sum()

    step = mx.compile(mx.grad(objective, argnums=(0, 1, 2)))
    mx.eval(q, k, v, d_out)
    return 1e3 * median_seconds(lambda: mx.eval(step(q, k, v, d_out)), warmup, repeat)


def measure(name: str, settings: dict, dtype, seed: int, warmup: int, repeat: int) -> dict:
    """One implementation's record: packed, dense and unpacked forward+backward milliseconds."""
    fn = attention.get(name)
    rows, length = settings["rows"], settings["length"]
    lengths = document_lengths(rows, length, settings["median"], settings["sigma"], settings["lo"], seed)
    heads, head_dim = (settings["n_heads"], settings["n_kv_heads"]), settings["head_dim"]
    time_it = lambda shape, segments: _fwdbwd_ms(fn, shape, heads, head_dim, dtype, segments, warmup, repeat)  # noqa: E731
    record = {"impl": name, **settings, "documents": len(lengths), "tokens": sum(lengths)}
    record["packed_ms"] = time_it((rows, length), packed_ids(lengths, rows, length))
    record["path"] = getattr(fn, "last_path", None)
    record["dense_ms"] = time_it((rows, length), None)
    batches = unpacked_batches(lengths, rows)
    record["unpacked_batches"] = len(batches)
    record["unpacked_ms"] = sum(time_it(shape, None) for shape in batches)
    record["packed_vs_unpacked"] = record["packed_ms"] / record["unpacked_ms"]
    record["packed_vs_dense"] = record["packed_ms"] / record["dense_ms"]
    return record


def table(records: list[dict]) -> str:
    lines = [
        "| impl | runs | documents | tokens | packed ms | dense ms | unpacked ms (batches) | packed / unpacked | packed / dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['impl']} | {r.get('path') or r['impl']} | {r['documents']} | {r['tokens']:,} | {r['packed_ms']:.2f} "
            f"| {r['dense_ms']:.2f} | {r['unpacked_ms']:.2f} ({r['unpacked_batches']}) "
            f"| {r['packed_vs_unpacked']:.2f} | {r['packed_vs_dense']:.2f} |"
        )
    return "\n".join(lines)


def run(
    impls: list[str],
    out: Path | None = None,
    seed: int = 0,
    warmup: int = ATTENTION_WARMUP,
    repeat: int = ATTENTION_REPEAT,
    progress: Callable[[dict], None] = lambda record: None,
    **settings,
) -> list[dict]:
    """Measures ``impls`` (checked first) on one packed batch; writes JSONL to ``out``."""
    impls = [attention.check_name(n) for n in impls]
    settings = {**DEFAULTS, **settings}
    dtype = mx.bfloat16 if env.backend() != "cpu" else mx.float32
    header = env.run_info(
        {**settings, "seed": seed, "impls": impls}, dtype=str(dtype).split(".")[-1], kind="packed-attention-bench"
    )
    if out:  # each record is written as it comes, so a run stopped early keeps what it measured
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(header) + "\n")
    records = []
    for name in impls:
        records.append(measure(name, settings, dtype, seed, warmup, repeat))
        progress(records[-1])
        if out:
            with open(out, "a") as sink:
                sink.write(json.dumps(records[-1]) + "\n")
    return records


def add_arguments(parser) -> None:
    parser.add_argument("--impls", default="poc,practical,demo", help="comma list of implementations")
    for name in ("rows", "length", "median"):
        parser.add_argument(f"--{name}", type=int, default=DEFAULTS[name], help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document lengths")
    parser.add_argument("--out", type=Path, help="JSONL results file")


def run_from_args(args) -> int:
    def show(record):
        print(
            f"{record['impl']} ({record['path'] or record['impl']}): packed {record['packed_ms']:.2f} ms, "
            f"dense {record['dense_ms']:.2f} ms, unpacked {record['unpacked_ms']:.2f} ms "
            f"({record['documents']} documents, {record['tokens']:,} tokens)",
            flush=True,
        )

    settings = dict(rows=args.rows, length=args.length, median=args.median)
    records = run(args.impls.split(","), out=args.out, seed=args.seed, progress=show, **settings)
    print(table(records))
    return 0
