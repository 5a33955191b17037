"""The comparison's plan, resumability, mlx_lm.lora settings and timing data (no training here)."""

import json

import pytest

from flashtune.bench import finetune, timing_data
from flashtune.bench.finetune import IMPLS, TOOL, Bench, Run, check_train_flags, plan
from flashtune.config import TrainConfig

from .fixtures import write_run


def test_plan_pairs_each_warm_up_with_its_run_and_keeps_tokens_per_step():
    runs = plan(["M"], [*IMPLS, TOOL], ["main", "sweep"], [512, 1024, 2048, 4096], 4096, 10, 20, list(IMPLS))
    main = [r for r in runs if r.suite != "sweep"]
    assert [(r.suite, r.impl) for r in main[:2]] == [("cold", "baseline"), ("main", "baseline")]
    assert len(main) == 10 and all(r.iters == 10 for r in main if r.suite == "cold")
    sweep = [r for r in runs if r.suite == "sweep"]
    assert {(r.batch, r.length) for r in sweep} == {(8, 512), (4, 1024), (2, 2048), (1, 4096)}
    assert len(sweep) == 16 and all(r.iters == 20 for r in sweep)
    assert str(sweep[0].relpath) == "sweep/M/L512-baseline.jsonl"
    assert str(main[0].relpath) == "main/M/cold/baseline.jsonl"
    assert not any(r.suite == "cold" for r in plan(["M"], ["demo"], ["main"], [], 1, 0, None, []))
    # -1 (the GPU default): the warm-up is as long as the measured run, so it compiles every shape
    full = plan(["M"], ["demo"], ["main"], [], 1, -1, None, [], iters=100)
    assert [(r.suite, r.iters) for r in full] == [("cold", 100), ("main", 100)]


def test_other_fine_tune_types_plan_into_their_own_folder():
    runs = plan(["M"], ["demo", TOOL], ["main", "sweep"], [512], 4096, 10, 20, ["demo"], fine_tune_type="dora")
    assert {r.fine_tune_type for r in runs} == {"dora"}
    assert [str(r.relpath) for r in runs] == [
        "dora/main/M/cold/demo.jsonl", "dora/main/M/demo.jsonl", f"dora/main/M/cold/{TOOL}.jsonl", f"dora/main/M/{TOOL}.jsonl",
        "dora/sweep/M/L512-demo.jsonl",
    ]  # fmt: skip
    assert runs[1].name == "main dora M demo"


def test_skip_existing_and_retry_failed(tmp_path):
    bench = Bench(tmp_path, tmp_path, tmp_path, {}, {}, skip_existing=True)
    ok, bad, todo = (
        Run("main", "TinyLlama-1.1B", "demo"),
        Run("main", "TinyLlama-1.1B", "poc"),
        Run("main", "TinyLlama-1.1B", "baseline"),
    )
    write_run(tmp_path, str(ok.relpath), suite="main", impl="demo")
    write_run(tmp_path, str(bad.relpath), suite="main", impl="poc", failed="boom")
    (tmp_path / todo.relpath).with_suffix(".jsonl.partial").write_text("{}\n")  # an interrupted run: not finished
    assert [bench.existing(r) for r in (ok, bad, todo)] == ["ok", "failed", None]
    assert bench.should_skip(ok) and bench.should_skip(bad) and not bench.should_skip(todo)
    bench.retry_failed = True
    assert not bench.should_skip(bad)


def test_budget_leaves_runs_that_would_not_fit(tmp_path):
    bench = Bench(tmp_path, tmp_path, tmp_path, {}, {}, budget_s=100)
    bench.durations[("main", "M")] = [60.0]
    assert bench.fits(Run("main", "M", "demo"))
    bench.started -= 50  # 50 s spent, a 60 s run would end past the budget
    assert not bench.fits(Run("main", "M", "demo"))
    assert bench.fits(Run("sweep", "M", "demo", 512, 8))  # no sweep run seen yet: only the 10 s floor applies
    assert bench.execute(Run("main", "M", "demo")) is None and bench.counts["left"] == 1


def test_mlx_lm_config_mirrors_the_recipe():
    config = TrainConfig(
        iters=100,
        batch_size=4,
        max_seq_length=1024,
        lora_rank=8,
        lora_scale=20.0,
        warmup=10,
        val_batches=4,
        steps_per_eval=50,
    )
    c = finetune.mlx_lm_config(config, Run("main", "M", TOOL))
    assert c["lora_parameters"] == {"rank": 8, "scale": 20.0, "dropout": 0.0}
    assert c["optimizer"] == "adamw" and c["optimizer_config"]["adamw"]["weight_decay"] == config.weight_decay
    assert c["lr_schedule"]["warmup"] == 10 and c["lr_schedule"]["arguments"] == [2e-4, 90, pytest.approx(2e-5)]
    assert (c["max_seq_length"], c["val_batches"], c["steps_per_eval"], c["steps_per_report"]) == (1024, 4, 50, 1)
    assert finetune.mlx_lm_config(config, Run("sweep", "M", TOOL, 2048, 2))["max_seq_length"] == 2049
    assert c["fine_tune_type"] == "lora"
    assert (
        finetune.mlx_lm_config(TrainConfig(fine_tune_type="full"), Run("main", "M", TOOL))["fine_tune_type"] == "full"
    )


def test_word_tokenizer_data_hits_exact_token_counts(tmp_path):
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(timing_data.write_word_tokenizer(tmp_path / "tok", 1000))
    meta = timing_data.make_dataset(
        tmp_path / "var", tokenizer, kind="variable", lo=30, hi=60, n_train=20, n_valid=4, seed=1
    )
    assert meta["train"]["min_tokens"] >= 30 and meta["train"]["max_tokens"] <= 60 and meta["valid"]["examples"] == 4
    count = timing_data.token_counter(tokenizer)
    lines = [json.loads(line)["text"] for line in (tmp_path / "var" / "train.jsonl").read_text().splitlines()]
    assert sum(count(t) for t in lines) == meta["train"]["tokens"]
    fixed = timing_data.make_dataset(tmp_path / "fixed", tokenizer, kind="fixed", length=64, n_train=8, n_valid=0)
    assert fixed["train"]["min_tokens"] == fixed["train"]["max_tokens"] == 65
    assert not (tmp_path / "fixed" / "valid.jsonl").exists()
    again = timing_data.make_dataset(
        tmp_path / "var2", tokenizer, kind="variable", lo=30, hi=60, n_train=20, n_valid=4, seed=1
    )
    assert again["train"]["sha256"] == meta["train"]["sha256"]  # deterministic


def test_train_flags_are_checked_before_any_run():
    assert check_train_flags("--no-fuse-projections --lora-rank 4") == ["--no-fuse-projections", "--lora-rank", "4"]
    assert check_train_flags("") == []
    with pytest.raises(SystemExit, match="--bogus 1 not understood by flashtune train"):
        check_train_flags("--no-pipeline --bogus 1")
