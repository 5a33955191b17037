"""End to end on the tiny model: a flashtune run, an mlx_lm.lora run and a failing run, as subprocesses."""

import json

import pytest

from flashtune.bench.finetune import Run
from flashtune.bench.report import read_run, summarize_run, write_report

from .fixtures import tiny_bench

pytestmark = pytest.mark.slow  # five subprocesses, ~25 s on 2 cores

RECIPE = "model: tiny\niters: 4\nbatch_size: 2\nlora_layers: 2\nsteps_per_eval: 2\nval_batches: 1\nsteps_per_save: 0\nsample: false\n"


def test_runs_record_alike_and_failures_are_results(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.jsonl").write_text('{"text": "fine"}\n{"nope": 1}\n')
    bench = tiny_bench(tmp_path, RECIPE, train_flags=["--no-fuse-projections"])
    results = bench.results
    assert bench.execute(Run("main", "tiny", "demo")) == "ok"
    assert bench.execute(Run("main", "tiny", "mlx_lm.lora")) == "ok"
    bench.data[("main", "tiny", None)] = broken
    assert bench.execute(Run("main", "tiny", "baseline")) == "failed"

    ours, peer, failed = (
        summarize_run(results / "main" / "tiny" / f"{i}.jsonl") for i in ("demo", "mlx_lm.lora", "baseline")
    )
    for s in (ours, peer):
        assert s["status"] == "ok" and s["iters"] == 4 and s["total_wall_s"] > 0 and s["peak_mem_gb"] > 0
        assert s["run_info"]["device"]["backend"] and s["bench"]["label"] == "tiny"
        assert [first for first, *_ in s["series"]] == [1, 2, 3, 4]  # mlx_lm reports every iteration
        assert s["series"][0][3]  # the first iteration compiled its batch shape
    assert (
        peer["run_info"]["tool"] == "mlx_lm.lora"
        and peer["run_info"]["config"]["mlx_lm"]["lora_parameters"]["rank"] == 8
    )
    assert peer["first_to_last_report_s"] > 0 and peer["final_val_loss"] is not None
    assert (
        failed["status"] == "failed"
        and failed["error"].startswith("DataFormatError: ")
        and "train.jsonl:2" in failed["error"]
    ), failed["error"]
    assert read_run(results / "main" / "tiny" / "baseline.jsonl")["run_info"]["run_info"]  # written by the bench
    assert (
        ours["bench"]["command"][-1] == "--no-fuse-projections"
        and ours["run_info"]["config"]["fuse_projections"] is False
    )
    assert not list(results.rglob("*.partial"))

    bench.skip_existing = True
    assert bench.execute(Run("main", "tiny", "demo")) is None and bench.counts["skipped"] == 1
    md = write_report(results).read_text()
    assert "| mlx_lm.lora | ok | 4 |" in md and "| baseline | failed |" in md
    assert json.loads((results / "main" / "tiny" / "demo.jsonl").read_text().splitlines()[0])["bench"]["impl"] == "demo"


def test_dora_runs_of_both_tools_train_dora(tmp_path):
    bench = tiny_bench(tmp_path, RECIPE)
    results = bench.results
    for impl in ("demo", "mlx_lm.lora"):
        assert bench.execute(Run("main", "tiny", impl, fine_tune_type="dora")) == "ok"
    ours, peer = (summarize_run(results / "dora" / "main" / "tiny" / f"{i}.jsonl") for i in ("demo", "mlx_lm.lora"))
    assert ours["fine_tune_type"] == peer["fine_tune_type"] == "dora"
    command = ours["bench"]["command"]
    assert (
        ours["run_info"]["config"]["fine_tune_type"] == "dora"
        and command[command.index("--fine-tune-type") + 1] == "dora"
    )
    assert peer["run_info"]["config"]["mlx_lm"]["fine_tune_type"] == "dora" and peer["iters"] == 4
    assert (
        "dora · 2 layers" in (results / "logs" / "dora" / "main" / "tiny" / "mlx_lm.lora.log").read_text()
    )  # mlx-lm's own header
    assert "4 DoRA iterations" in write_report(results).read_text()
