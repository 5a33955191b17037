"""`flashtune report`: tables and plots from JSONL alone, failed runs shown, performance goals checked."""

import pytest

from flashtune.bench import report
from flashtune.cli import main as cli_main

from .fixtures import LABEL, write_results, write_run


def test_summary_of_a_flashtune_run(tmp_path):
    path = write_run(
        tmp_path, "a.jsonl", suite="main", impl="demo", step_s=0.1, iters=100, tokens=1000, warmup_first=2.0
    )
    s = report.summarize_run(path)
    assert s["status"] == "ok" and s["iters"] == 100 and s["label"] == LABEL
    assert s["total_wall_s"] == pytest.approx(2.0 + 99 * 0.1)
    assert s["median_step_s"] == pytest.approx(0.1)  # the compile step is flagged and left out
    assert s["steady_tokens_per_s"] == pytest.approx(10000)
    assert s["tokens_per_s"] == pytest.approx(100 * 1000 / s["total_wall_s"])
    assert s["first_step_s"] == 2.0 and s["warmup_steps"] == 1 and s["final_val_loss"] == 2.5


def test_summary_of_windowed_reports(tmp_path):
    path = write_run(
        tmp_path, "p.jsonl", suite="main", impl="mlx_lm.lora", step_s=0.3, iters=100, window=10, warmup_first=1.0
    )
    s = report.summarize_run(path)
    assert s["iters"] == 100 and s["total_wall_s"] == pytest.approx(10 * 1.0 + 90 * 0.3)
    assert s["median_step_s"] == pytest.approx(0.3)
    assert len(s["series"]) == 10 and s["series"][1][:2] == (11, 20)


def test_failed_run_is_summarized_not_dropped(tmp_path):
    path = write_run(
        tmp_path, "f.jsonl", suite="sweep", impl="baseline", length=4096, batch=1, failed="RuntimeError: out of memory"
    )
    s = report.summarize_run(path)
    assert s["status"] == "failed" and s["oom"] and s["iters"] == 0 and "total_wall_s" not in s


def test_main_table_speedups_and_failures(tmp_path):
    runs = report.collect(write_results(tmp_path))
    main = [s for s in runs if s["suite"] == "main"]
    table = report.main_table(main)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert list(rows) == ["baseline", "demo", "poc", "mlx_lm.lora"]
    assert "failed" in rows["poc"] and "out of memory" not in rows["poc"]
    demo = next(s for s in main if s["impl"] == "demo")
    base = next(s for s in main if s["impl"] == "baseline")
    assert f"{base['total_wall_s'] / demo['total_wall_s']:.3g}" in rows["demo"]


def test_performance_goals(tmp_path):
    runs = report.collect(write_results(tmp_path))
    table = report.targets_table([s for s in runs if s["suite"] == "main"], [s for s in runs if s["suite"] == "sweep"])
    assert "demo tok/s vs baseline at 4×1024 | 1.50× | ≥ 1.3× | yes" in table
    assert "baseline failed" in table  # 4096: baseline out of memory
    assert "mlx_lm.lora | 0.27 | ≤ 0.33 | yes" in table  # (2 + 99 * 0.08) / (10 * 1 + 90 * 0.3)


def test_write_report_tables_and_plots(tmp_path):
    results = write_results(tmp_path)
    md = report.write_report(results).read_text()
    for heading in (
        "## Performance goals",
        f"## {LABEL}: 100 LoRA iterations",
        "### Warm-up runs",
        "sequence-length sweep",
        "## Attention benchmark",
    ):
        assert heading in md
    assert "failed: out of memory" in md and "NVIDIA H100" in md and "random weights" in md
    for png in (
        "iterations-tinyllama-1.1b.png",
        "sweep-tokens-tinyllama-1.1b.png",
        "sweep-memory-tinyllama-1.1b.png",
        "attention-speedup.png",
    ):
        assert (results / png).stat().st_size > 5000, png
        assert f"]({png})" in md


def test_report_command(tmp_path, capsys):
    results = write_results(tmp_path)
    assert cli_main(["report", str(results)]) == 0
    assert "speedup vs mlx_lm.lora" in capsys.readouterr().out


def test_empty_folder(tmp_path):
    assert "No results found" in report.write_report(tmp_path).read_text()


def test_dora_runs_get_their_own_tables_and_goal(tmp_path):
    results = write_results(tmp_path)
    for impl, step_s in (("demo", 0.1), ("mlx_lm.lora", 0.25)):
        write_run(
            results,
            f"dora/main/TinyLlama-1.1B/{impl}.jsonl",
            suite="main",
            impl=impl,
            step_s=step_s,
            fine_tune_type="dora",
        )
    runs = report.collect(results)
    assert {s["fine_tune_type"] for s in runs} == {"lora", "dora"}  # files without the key are LoRA runs
    md = report.write_report(results).read_text()
    assert f"## {LABEL}: 100 LoRA iterations" in md and f"## {LABEL}: 100 DoRA iterations" in md
    lora_table = md.split("100 LoRA iterations")[1].split("## ")[0]
    dora_table = md.split("100 DoRA iterations")[1].split("## ")[0]
    assert lora_table.count("| demo |") == 1 and dora_table.count("| demo |") == 1 and "| baseline |" not in dora_table
    # (2 + 99 * 0.1) / (2 + 99 * 0.25): the DoRA goal is half of mlx_lm.lora's DoRA time
    assert (
        "TinyLlama-1.1B (DoRA) | time for 100 iterations, best flashtune (demo) / mlx_lm.lora | 0.44 | ≤ 0.5 | yes"
        in md
    )
    assert (results / "iterations-tinyllama-1.1b-dora.png").is_file() and (
        results / "iterations-tinyllama-1.1b.png"
    ).is_file()
