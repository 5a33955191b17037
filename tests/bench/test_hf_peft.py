"""The hf-peft peer without torch: when it is skipped, the batches it is fed, its settings, records and report rows."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import flashtune  # noqa: F401  (BLAS before mlx)
from flashtune.bench import finetune, goals, hf_peft, hf_peft_train, report
from flashtune.bench.assets import ModelSetup
from flashtune.config import TrainConfig
from flashtune.train import iterations
from flashtune.train.loop import Trainer
from flashtune.train.prepare import make_schedule, prepare
from tests.tiny_models import TINY_TEXTS, write_tiny_hf_model

from .fixtures import write_results, write_run

NO_TORCH = "ModuleNotFoundError: No module named 'torch'"


def fake_python(folder: Path, answer: dict = None) -> str:
    """A stand-in interpreter: prints ``answer`` as the probe's JSON line, or fails as a Python without torch does."""
    path = folder / "python"
    body = f"echo '{json.dumps(answer)}'" if answer else f'echo "{NO_TORCH}" >&2; exit 1'
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def varied_dataset(folder: Path, kind: str) -> Path:
    """Examples of 3 to ~70 words, so batches differ in length; ``completions`` also masks prompts."""
    words = " ".join(TINY_TEXTS).split()
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(13):
        text = " ".join(words[(7 * i) % len(words) :][: 3 + 5 * i])
        lines.append({"text": text} if kind == "text" else {"prompt": text, "completion": " ".join(words[i : i + 4])})
    (folder / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_skipped_with_one_line_where_torch_is_missing(tmp_path, capsys):
    python = fake_python(tmp_path)
    argv = [
        "--dry-run",
        "--device",
        "cpu",
        "--suites",
        "main",
        "--results",
        str(tmp_path / "r"),
        "--torch-python",
        python,
    ]
    assert finetune.main([*argv, "--impls", "demo,hf-peft,hf-peft+compile"]) == 0
    out = capsys.readouterr().out
    assert f"hf-peft: skipped (torch with CUDA not found: {python}: {NO_TORCH})" in out.splitlines()
    assert "main SmolLM2-135M demo" in out and "-> main/SmolLM2-135M/hf-peft" not in out
    assert finetune.main([*argv, "--hf-peft-device", "cpu"]) == 0  # the default impls include both hf-peft variants
    assert f"hf-peft: skipped (torch, transformers and peft not found: {python}: {NO_TORCH})" in capsys.readouterr().out


def test_probe_decides_the_device(tmp_path):
    cpu_only = fake_python(tmp_path, {"torch": "2.13.0+cpu", "transformers": "5.25.0", "peft": "0.21.2", "cuda": False})
    options, why = hf_peft.check(cpu_only, "auto")
    assert (
        options is None
        and why
        == f"torch with CUDA not found: {cpu_only} has torch 2.13.0+cpu without a CUDA device; --hf-peft-device cpu runs it on the CPU"
    )
    options, why = hf_peft.check(cpu_only, "cpu")
    assert why == "" and (options.python, options.device, options.probe["peft"]) == (cpu_only, "cpu", "0.21.2")
    (tmp_path / "gpu").mkdir()
    gpu = fake_python(tmp_path / "gpu", {"torch": "2.9.0", "cuda": True, "device_name": "NVIDIA H200"})
    impls, sweep, options = hf_peft.keep_available(["demo", "hf-peft"], ["demo"], gpu, "auto", say=pytest.fail)
    assert (impls, sweep, options.device) == (["demo", "hf-peft"], ["demo"], "cuda")
    assert hf_peft.keep_available(["demo"], [], None, "auto", say=pytest.fail) == (["demo"], [], None)  # nothing probed
    with pytest.raises(ValueError, match="choose one of auto, cuda, cpu"):
        hf_peft.check(gpu, "tpu")


def test_default_torch_python_is_this_interpreter(monkeypatch):
    monkeypatch.delenv(hf_peft.TORCH_PYTHON_ENV, raising=False)
    assert hf_peft.torch_python(None) == sys.executable
    monkeypatch.setenv(hf_peft.TORCH_PYTHON_ENV, "/opt/torch/bin/python")
    assert hf_peft.torch_python(None) == "/opt/torch/bin/python" and hf_peft.torch_python("/x/python") == "/x/python"


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="this interpreter has torch")
def test_this_interpreter_without_torch_is_skipped_not_run(monkeypatch):
    monkeypatch.delenv(hf_peft.TORCH_PYTHON_ENV, raising=False)
    lines = []
    impls, _, options = hf_peft.keep_available(["demo", "hf-peft"], [], None, "auto", say=lines.append)
    assert impls == ["demo"] and options is None
    assert (
        len(lines) == 1
        and lines[0].startswith(f"hf-peft: skipped (torch with CUDA not found: {sys.executable}: ")
        and "torch" in lines[0][40:]
    )


@pytest.mark.parametrize("kind", ["text", "completions"])
def test_exported_batches_are_the_ones_flashtune_trains_on(tmp_path, kind):
    folder = write_tiny_hf_model(tmp_path / "model")
    data = varied_dataset(tmp_path / "data", kind)
    config = TrainConfig(model=str(folder), data=str(data), out=str(tmp_path / "run"), iters=9, batch_size=3, lora_layers=2,
                         steps_per_eval=0, steps_per_save=0, sample=False, attn="practical")  # fmt: skip
    setup = ModelSetup("tiny", "pretrained", str(folder), "pretrained", folder, folder, "tiny word-level")
    from flashtune import env

    meta = hf_peft.export_batches(config, data, setup, env.backend(), tmp_path / "batches")
    _, exported = hf_peft_train.load_batches(tmp_path / "batches")
    run = prepare(config)
    trainer = Trainer(run)
    try:
        ours = [next(trainer.batches) for _ in range(config.iters)]
    finally:
        trainer.close()
    assert len(exported) == len(ours) == 9 and len({tuple(s) for s in meta["shapes"]}) > 1, meta["shapes"]
    for mine, theirs in zip(exported, ours):
        for name in ("inputs", "targets", "mask"):
            expected = np.array(getattr(theirs, name))
            assert mine[name].dtype == expected.dtype and np.array_equal(mine[name], expected), name
        assert (mine["documents"], mine["input_tokens"]) == (theirs.documents, theirs.input_tokens)
    assert meta["pad_lengths"] == run.pad_lengths and meta["loss_tokens"] == sum(int(b.mask.sum().item()) for b in ours)
    prompt_masked = [b["mask"][row, 0] == 0 for b in exported for row in range(len(b["mask"]))]
    assert all(prompt_masked) if kind == "completions" else not any(prompt_masked)


def test_run_config_speaks_peft_and_schedule_matches_flashtune():
    config = TrainConfig(
        iters=100, warmup=10, learning_rate=2e-4, min_lr_ratio=0.1, lora_rank=8, lora_scale=20.0, lora_layers=16
    )
    run = hf_peft.run_config(config, "TinyLlama-1.1B (random-init weights)", "bfloat16", "cuda", compiled=True)
    assert run["lora"] == {
        "rank": 8,
        "alpha": 160.0,
        "dropout": 0.0,
        "layers": 16,
    }  # PEFT's scaling alpha / r = mlx-lm's scale
    assert hf_peft_train.check_config(run) is run and run["compile"] and run["weight_decay"] == config.weight_decay
    assert (
        run["fine_tune_type"] == "lora"
        and hf_peft.run_config(TrainConfig(fine_tune_type="dora"), "m", "float32", "cpu", False)["fine_tune_type"]
        == "dora"
    )
    schedule = make_schedule(config)
    for step in range(0, 105):
        expected = schedule(mx.array(step)).item()
        assert math.isclose(hf_peft_train.learning_rate(step, run), expected, rel_tol=1e-5, abs_tol=1e-12), step
    with pytest.raises(ValueError, match="lacks seed, lora.alpha"):
        hf_peft_train.check_config(
            {k: v for k, v in dict(run, lora={"rank": 8, "dropout": 0, "layers": 1}).items() if k != "seed"}
        )


def part(rows: int, length: int, documents: int, input_tokens: int) -> dict:
    """A micro-batch as hf_peft_train.load_batches returns it."""
    arrays = {k: np.zeros((rows, length), np.int32) for k in ("inputs", "targets")}
    return dict(arrays, mask=np.ones((rows, length), np.float32), documents=documents, input_tokens=input_tokens)


def test_records_carry_flashtune_fields(tmp_path):
    written = []
    log = iterations.IterationLog(
        write=written.append,
        show=lambda r: None,
        nan_stop=pytest.fail,
        fields={"attn": "demo", "model": "m", "world_size": 1},
        compiled=True,
    )
    log.complete(
        iterations.Iteration(
            1,
            0.0,
            [(4, 128)],
            documents=4,
            input_tokens=400,
            loss=mx.array(2.5),
            tokens=mx.array(300),
            lr=mx.array(1e-4),
        )
    )
    ours = hf_peft_train.step_record(1, 0.5, 300, 2.5, 1e-4, None, [part(4, 128, 4, 400)], True, "m")
    assert set(written[0]) - {"world_size"} == set(ours) - {"source"}
    assert (
        ours["attn"],
        ours["padded_tokens"],
        ours["tokens_per_s"],
        ours["shape"],
        ours["documents"],
        ours["input_tokens"],
    ) == ("sdpa", 512, 600.0, [4, 128], 4, 400)
    path = write_run(tmp_path, "main/TinyLlama-1.1B/hf-peft.jsonl", suite="main", impl="hf-peft", iters=3)
    lines = path.read_text().splitlines()
    steps = [
        hf_peft_train.step_record(
            i, 0.2, 100, 3.0 - i / 10, 1e-4, None, [part(4, 128 * (1 + i // 2), 4, 300)], i in (1, 2), "m"
        )
        for i in (1, 2, 3)
    ]
    path.write_text("\n".join(lines[:2] + [json.dumps(r) for r in steps] + lines[-1:]) + "\n")
    s = report.summarize_run(path)
    assert s["status"] == "ok" and s["iters"] == 3 and s["warmup_steps"] == 2 and s["peak_mem_gb"] is None
    assert s["median_step_s"] == pytest.approx(0.2) and s["final_loss"] == pytest.approx(2.8)


def test_report_sets_hf_peft_beside_the_others_and_checks_its_goals(tmp_path):
    results = write_results(tmp_path)
    write_run(results, "main/TinyLlama-1.1B/hf-peft.jsonl", suite="main", impl="hf-peft", step_s=0.2, warmup_first=1.0)
    write_run(
        results,
        "main/TinyLlama-1.1B/hf-peft+compile.jsonl",
        suite="main",
        impl="hf-peft+compile",
        step_s=0.15,
        warmup_first=30.0,
    )
    runs = report.collect(results)
    main = [s for s in runs if s["suite"] == "main"]
    rows = {line.split(" | ")[0].strip("| "): line for line in report.main_table(main).splitlines()[2:]}
    assert list(rows) == ["baseline", "demo", "poc", "mlx_lm.lora", "hf-peft", "hf-peft+compile"]
    hf_time = 1.0 + 99 * 0.2
    demo_time = 2.0 + 99 * 0.08
    assert f"| {hf_time / demo_time:.3g} |" in rows["demo"]  # the speedup vs hf-peft column
    table = goals.targets_table(main, [])
    # the faster hf-peft variant counts: eager's 20.8 s against compile's 44.85 s; steady 2600/0.08 vs 2600/0.15
    assert f"best flashtune (demo) / best hf-peft (hf-peft) | {demo_time / hf_time:.2f} | ≤ 0.5 | yes" in table
    steady = {s["impl"]: s["steady_tokens_per_s"] for s in main if s["status"] == "ok"}
    assert (
        f"steady tok/s, best flashtune (demo) vs best hf-peft (hf-peft+compile) | {steady['demo'] / steady['hf-peft+compile']:.2f}× | ≥ 2× | no"
        in table
    )
    md = report.write_report(results).read_text()
    assert "hf-peft is Hugging Face transformers + PEFT" in md and "| hf-peft+compile | ok | 100 |" in md
