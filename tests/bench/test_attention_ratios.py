"""flashtune.bench.attention_ratios: per-run time ratios of two implementations and their median."""

import json
from pathlib import Path

import pytest

from flashtune.bench import attention_ratios


def write_bench(folder: Path, rows):
    """An attention.jsonl: a header, then (tag, length, impl, fwd_ms, fwdbwd_ms[, status]) records."""
    folder.mkdir(parents=True)
    lines = [{"run_info": True, "kind": "attention-bench"}]
    for tag, length, impl, fwd, fwdbwd, *status in rows:
        lines.append(
            {
                "impl": impl,
                "tag": tag,
                "length": length,
                "fwd_ms": fwd,
                "fwdbwd_ms": fwdbwd,
                "status": (status or ["ok"])[0],
            }
        )
    (folder / "attention.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_ratios_per_run_and_median(tmp_path):
    script = attention_ratios
    runs = [
        write_bench(tmp_path / "a", [("tiny", 2048, "demo", 0.9, 2.0), ("tiny", 2048, "poc", 1.0, 1.6), ("tiny", 2048, "baseline", 9.0, 20.0)]),
        write_bench(tmp_path / "b", [("tiny", 2048, "demo", 1.2, 2.0), ("tiny", 2048, "poc", 1.0, 2.0)]),
        write_bench(tmp_path / "c", [("tiny", 2048, "demo", 0.8, 2.2), ("tiny", 2048, "poc", 1.0, 2.0),
                                     ("qwen", 512, "demo", 0.3, 0.6), ("qwen", 512, "poc", 0.2, 0.5, "failed")]),
    ]  # fmt: skip
    table = script.ratios(runs, "demo", "poc")
    assert list(table) == [("tiny", 2048)]  # a failed poc row is no ratio
    assert [f for f, _ in table[("tiny", 2048)]] == pytest.approx([0.9, 1.2, 0.8])
    assert [b for _, b in table[("tiny", 2048)]] == pytest.approx([1.25, 1.0, 1.1])
    out = tmp_path / "ratios.md"
    assert script.main([str(r) for r in runs] + ["--out", str(out)]) == 0
    row = out.read_text().splitlines()[2]
    assert row == "| tiny | 2048 | 0.90 / 1.20 / 0.80 | 0.90 | 1.25 / 1.00 / 1.10 | 1.10 |"


def test_missing_file_and_missing_pair_are_named(tmp_path):
    script = attention_ratios
    with pytest.raises(SystemExit, match="has no attention.jsonl"):
        script.ratios([tmp_path], "demo", "poc")
    run = write_bench(tmp_path / "a", [("tiny", 1024, "demo", 1.0, 2.0)])
    with pytest.raises(SystemExit, match="no shape has both demo and poc"):
        script.ratios([run], "demo", "poc")
