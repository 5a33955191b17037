"""The attention benchmark measures every implementation, checks correctness inside, and records failures."""

import json

import flashtune  # noqa: F401
import mlx.core as mx

from flashtune.bench import attention as bench
from flashtune.bench.report import attention_table, read_jsonl


def test_bench_records_every_implementation_with_header(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.SHAPE_SETS, "tiny", lambda: [bench.Shape("tiny", 1, 4, 2, 96, 32)])
    out = tmp_path / "attention.jsonl"
    records = bench.run(["tiny"], warmup=1, repeat=2, out=out)
    header, rows = read_jsonl(out)
    assert header["run_info"] and header["kind"] == "attention-bench" and header["device"]["backend"]
    assert [r["impl"] for r in rows] == ["baseline", "practical", "demo", "poc"]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["rel_err"] < 1e-5  # float32 on CPU, against float32 baseline
        assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and r["extra_mb"] > 0
        assert r["fwd_tflops"] == bench.Shape("tiny", 1, 4, 2, 96, 32).flops(False) / r["fwd_ms"] / 1e9
    assert records[1:] == rows
    table = attention_table(rows)
    assert table.count("\n") == len(rows) + 1 and "practical" in table


def test_failures_are_recorded_not_dropped(monkeypatch):
    def broken(q, k, v, *, scale, mask=None):
        raise RuntimeError("[malloc] Unable to allocate 123 bytes")

    monkeypatch.setitem(bench.attention._REGISTRY, "broken", broken)
    record = bench.measure("broken", bench.Shape("t", 1, 2, 2, 8, 16), mx.float32, warmup=0, repeat=1)
    assert record["status"] == "oom" and "allocate" in record["error"]
    json.dumps(record)


def test_causal_flops_are_half_of_full():
    full, causal = bench.Shape("t", 2, 8, 2, 128, 64, causal=False), bench.Shape("t", 2, 8, 2, 128, 64)
    assert causal.flops(False) * 2 == full.flops(False) == 4 * 2 * 8 * 128 * 128 * 64
    assert causal.flops(True) == 3.5 * causal.flops(False)
