"""hf_peft_train.py really training on the CPU, against flashtune on the same weights and batches.

Needs a Python with torch, transformers and peft: $FLASHTUNE_TORCH_PYTHON, else this interpreter;
skipped where there is none (CI). For example:
    FLASHTUNE_TORCH_PYTHON=/path/to/venv/bin/python python -m pytest tests/bench/test_hf_peft_torch.py
"""

import json
import subprocess

import mlx.core as mx
import pytest

import flashtune  # noqa: F401  (BLAS before mlx)
from flashtune import models
from flashtune.bench import hf_peft
from flashtune.bench.assets import ModelSetup
from flashtune.bench.finetune import Run
from flashtune.bench.report import summarize_run, write_report
from flashtune.config import TrainConfig
from flashtune.train.lora import adapter_config, apply_lora, train_last_blocks
from flashtune.train.step import loss_sum
from tests.tiny_models import write_text_dataset, write_tiny_hf_model

from .fixtures import tiny_bench

OPTIONS, WHY = hf_peft.check(hf_peft.torch_python(None), "cpu")
pytestmark = pytest.mark.skipif(OPTIONS is None, reason=f"no torch here ({WHY}); set {hf_peft.TORCH_PYTHON_ENV}")

# Qwen2.5-1.5B's RoPE base and tied embeddings; HF's and mlx-lm's defaults differ, so the tiny config names them.
ARCHITECTURES = {"llama": {}, "qwen2": {"rope_theta": 1000000.0, "tie_word_embeddings": True}}


def train(tmp_path, folder, data, **settings):
    """Runs hf_peft_train.py on the CPU; returns (config, its records, the exported batches folder)."""
    config = TrainConfig(**{"model": str(folder), "data": str(data), "iters": 10, "batch_size": 2, "lora_layers": 1,
                            "learning_rate": 1e-3, "warmup": 2, **settings})  # fmt: skip
    setup = ModelSetup("tiny", "pretrained", str(folder), "pretrained", folder, folder, "tiny word-level")
    work, out = tmp_path / "work", tmp_path / "records.jsonl"
    work.mkdir()
    command = hf_peft.prepare_run(setup, config, hf_peft.HF_TOOL, data, OPTIONS, work, out)
    done = subprocess.run(command, env=hf_peft.child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return config, [json.loads(line) for line in out.read_text().splitlines()], work / "batches"


def flashtune_trainable(model, config) -> int:
    """How many parameters flashtune trains on ``model`` for ``config``'s fine-tuning type."""
    if config.fine_tune_type == "full":
        return train_last_blocks(model, config.lora_layers)
    return apply_lora(
        model, adapter_config(config.lora_layers, config.lora_rank, config.lora_scale, 0.0, config.fine_tune_type)
    )


@pytest.mark.parametrize(
    "model_type, fine_tune_type", [("llama", "lora"), ("qwen2", "lora"), ("llama", "dora"), ("qwen2", "full")]
)
def test_first_loss_and_trainable_match_flashtune_and_loss_falls(tmp_path, model_type, fine_tune_type):
    folder = write_tiny_hf_model(tmp_path / "model", model_type, **ARCHITECTURES[model_type])
    data = write_text_dataset(tmp_path / "data")
    config, records, batches = train(tmp_path, folder, data, fine_tune_type=fine_tune_type)
    info, steps = records[0], records[1:]
    assert info["run_info"] and info["tool"] == "hf-peft" and info["device"]["backend"] == "cpu" and info["torch"]
    if fine_tune_type == "full":
        assert info["trains"] == {"fine_tune_type": "full", "blocks": [1]}
    else:
        assert info["trains"]["layers_to_transform"] == [1] and info["trains"]["lora_alpha"] == 160.0
        assert info["trains"]["use_dora"] == (fine_tune_type == "dora")

    model, _, _ = models.load_model(str(folder), dtype="float32")
    first = dict(mx.load(str(batches / "step-00001.npz")))
    total, count = loss_sum(model, first["inputs"], first["targets"], first["mask"])
    # LoRA's B starts at zero on both sides (DoRA's magnitude at the weight's norm), so the first loss is the base model's
    expected = (total / count).item()
    assert steps[0]["loss"] == pytest.approx(expected, rel=1e-5), (steps[0]["loss"], expected)
    assert steps[0]["tokens"] == int(count.item())
    assert info["trainable_params"] == flashtune_trainable(model, config)

    losses = [r["loss"] for r in steps]
    assert [r["iter"] for r in steps] == list(range(1, 11)) and steps[0]["warmup"] and not steps[-1]["warmup"]
    assert max(losses[-3:]) < losses[0] - 0.2, losses
    assert steps[0]["lr"] == 0.0 and steps[2]["lr"] == pytest.approx(1e-3) and steps[0]["peak_mem_gb"] is None


@pytest.fixture
def bench(tmp_path):
    """A Bench with the tiny model, 4 iterations per run, hf-peft on the CPU."""
    recipe = (
        "model: tiny\niters: 4\nbatch_size: 2\nlora_layers: 2\nsteps_per_eval: 0\nsteps_per_save: 0\nsample: false\n"
    )
    return tiny_bench(tmp_path, recipe, hf=OPTIONS)


def test_bench_runs_and_reports_hf_peft(bench):
    assert bench.execute(Run("main", "tiny", "hf-peft")) == "ok"
    s = summarize_run(bench.results / "main" / "tiny" / "hf-peft.jsonl")
    assert s["iters"] == 4 and s["bench"]["tool"] == "hf-peft" and s["run_info"]["config"]["compile"] is False
    assert s["status"] == "ok" and s["total_wall_s"] > 0 and s["peak_mem_gb"] is None and s["series"][0][3]
    assert "| hf-peft | ok | 4 |" in write_report(bench.results).read_text()
    assert not list(bench.results.rglob("*.partial")) and not list(bench.cache.glob("hf-peft-run-*"))


@pytest.mark.slow  # torch.compile on the CPU: 1-2 min of inductor compiling on 2 cores
def test_compiled_variant_trains_alike_or_fails_as_a_result(bench):
    assert bench.execute(Run("main", "tiny", "hf-peft")) == "ok"
    compiled = bench.execute(Run("main", "tiny", "hf-peft+compile"))
    eager, again = (
        summarize_run(bench.results / "main" / "tiny" / f"{impl}.jsonl") for impl in ("hf-peft", "hf-peft+compile")
    )
    if compiled == "ok":  # a failure is a result too, with its error
        assert again["run_info"]["config"]["compile"] and [r[1] for r in again["losses"]] == pytest.approx(
            [r[1] for r in eager["losses"]], rel=1e-4
        )
    else:
        assert again["status"] == "failed" and again["error"]
    assert "| hf-peft+compile |" in write_report(bench.results).read_text()
