"""The attention benchmark measures every implementation, checks correctness inside, and records failures."""

import json

import mlx.core as mx
import pytest

import flashtune  # noqa: F401
from flashtune.bench import attention as bench
from flashtune.bench.attention_report import attention_table, demo_length_note
from flashtune.bench.report import read_jsonl
from flashtune.cli import main as cli_main

TINY = bench.Shape("tiny", 1, 4, 2, 96, 32)


@pytest.fixture
def tiny_set(monkeypatch):
    monkeypatch.setitem(bench.SHAPE_SETS, "tiny", lambda: [TINY])
    return "tiny"


def test_bench_records_anchor_then_every_implementation_with_header(tmp_path, tiny_set):
    out = tmp_path / "attention.jsonl"
    records = bench.run([tiny_set], warmup=1, repeat=2, out=out)
    header, rows = read_jsonl(out)
    assert header["run_info"] and header["kind"] == "attention-bench" and header["device"]["backend"]
    assert header["config"]["anchor"] is True and header["config"]["repeat"] == 2
    assert [r["impl"] for r in rows] == ["anchor", "baseline", "practical", "demo", "poc"]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["rel_err"] < 1e-5  # float32 on CPU, against float32 baseline
        assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and r["extra_mb"] > 0
        assert r["fwd_tflops"] == TINY.flops(False) / r["fwd_ms"] / 1e9
    assert "anchor" not in bench.attention.names()  # measured, never registered
    assert records[1:] == rows
    table = attention_table(rows)
    assert table.count("\n") == len(rows) + 1 and "practical" in table


def test_no_anchor_flag_skips_the_anchor(tmp_path, tiny_set):
    out = tmp_path / "attention.jsonl"
    argv = ["bench", "attention", "--sets", tiny_set, "--impl", "baseline", "--no-anchor",
            "--warmup", "0", "--repeat", "1", "--out", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    header, rows = read_jsonl(out)
    assert [r["impl"] for r in rows] == ["baseline"]
    assert header["config"]["anchor"] is False and header["config"]["warmup"] == 0


def test_timed_calls_run_compiled_graphs_not_python(monkeypatch):
    """The wrapper's Python runs only while tracing: once for the error check, once per pass."""
    calls = []

    def counting(q, k, v, *, scale, mask=None):
        calls.append(q.shape)
        return bench.attention.get("baseline")(q, k, v, scale=scale, mask=mask)

    monkeypatch.setitem(bench.attention._REGISTRY, "counting", counting)
    record = bench.measure("counting", TINY, mx.float32, warmup=3, repeat=7)
    assert record["status"] == "ok", record
    assert len(calls) == 3, calls  # uncompiled, this would be 3 + 2 * (3 + 7) + 1


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


def _record(impl, fwdbwd_ms, tag="tinyllama", length=1024, batch=4, status="ok"):
    shape = {"tag": tag, "batch": batch, "n_heads": 32, "n_kv_heads": 4, "length": length, "head_dim": 64}
    timings = {"fwd_ms": fwdbwd_ms / 3, "fwdbwd_ms": fwdbwd_ms} if status == "ok" else {}
    return {"impl": impl, **shape, "status": status, **timings}


def _column(table, column):
    """{impl: cell} of one column of an attention table with one shape."""
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    at = lines[0].index(column)
    return {cells[4]: cells[at] for cells in lines[2:]}


def test_vs_anchor_is_anchor_time_over_impl_time():
    records = [_record("anchor", 1.0), _record("baseline", 10.0), _record("demo", 1.25),
               _record("poc", 0.8), _record("practical", 5.0, status="oom")]  # fmt: skip
    vs_anchor = _column(attention_table(records), "vs anchor")
    assert vs_anchor == {"anchor": "1", "baseline": "0.1", "demo": "0.8", "poc": "1.25", "practical": "–"}
    assert _column(attention_table(records), "vs demo")["anchor"] == "1.25"


def test_files_without_anchor_rows_still_render():
    table = attention_table([_record("baseline", 10.0), _record("demo", 1.0)])
    assert _column(table, "vs anchor") == {"baseline": "–", "demo": "–"}
    assert _column(table, "fwd+bwd speedup vs baseline")["demo"] == "10"


def test_demo_per_token_ratio_of_l1000_to_l1024():
    records = [
        _record("demo", 1.0, length=1024), _record("demo", 0.9, length=1000),
        _record("baseline", 5.0, length=1000),  # other implementations do not count
        _record("demo", 2.0, tag="qwen2.5-1.5b", length=1024, batch=2),
        _record("demo", 2.0, tag="qwen2.5-1.5b", length=1000, batch=2),
        _record("demo", 1.0, tag="only-1024", length=1024),
    ]  # fmt: skip
    # tinyllama: (0.9 / 4000) / (1.0 / 4096) = 0.9216; qwen: 1024 / 1000 = 1.024
    assert demo_length_note(records) == "demo L=1000 vs 1024 per token: tinyllama 0.92, qwen2.5-1.5b 1.02"


def test_demo_per_token_line_needs_both_lengths_measured():
    assert demo_length_note([_record("demo", 1.0, length=1024)]) == ""
    assert demo_length_note([_record("demo", 1.0), _record("demo", 1.0, length=1000, status="oom")]) == ""
