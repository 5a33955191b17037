"""Data-parallel training over mx.distributed: two local CPU processes on the ring backend
match one process on the combined batch, and a run resumes with a different number of ranks."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import flashtune
from flashtune import config as config_module
from flashtune.train import loop, records
from tests.tiny_models import write_text_dataset, write_tiny_hf_model

SETTINGS = dict(
    iters=10,
    batch_size=4,
    lora_layers=2,
    learning_rate=1e-3,
    warmup=2,
    steps_per_eval=0,
    val_batches=1,
    steps_per_save=5,
    sample=False,
    attn="practical",
)


def flags(settings):
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out


# The launcher installed beside this Python (CI runs the venv's python without activating it).
MLX_LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")


def launch_two_ranks(model, data, out, port, **extra):
    command = [
        MLX_LAUNCH,
        "--backend",
        "ring",
        "--hosts",
        "127.0.0.1",
        "-n",
        "2",
        "--starting-port",
        str(port),
        "--python",
        sys.executable,
        str(Path(flashtune.__file__).parent / "__main__.py"),
        "train",
        *flags({**SETTINGS, **extra, "model": model, "data": data, "out": out}),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def adapters(run_dir):
    return mx.load(str(Path(run_dir) / "adapters.safetensors"))


def assert_same_adapters(a, b):
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(np.array(a[name]), np.array(b[name]), rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return str(write_tiny_hf_model(root / "model")), str(write_text_dataset(root / "data"))


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    loop.train(config_module.resolve(None, **SETTINGS, model=tiny[0], data=tiny[1], out=str(out)))
    return out


@pytest.mark.skipif(not MLX_LAUNCH, reason="mlx.launch is not installed")
def test_two_ring_ranks_match_one_process_on_the_combined_batch(tiny, single, tmp_path):
    out = tmp_path / "two"
    launch_two_ranks(*tiny, out, port=39571)
    assert_same_adapters(adapters(single), adapters(out))
    rows = records.read(out / "records.jsonl")  # only rank 0 writes
    steps = [r for r in rows if "iter" in r and not r.get("eval")]
    assert rows[0]["world_size"] == 2 and len(steps) == 10
    assert all(r["world_size"] == 2 for r in steps)
    single_steps = [r for r in records.read(single / "records.jsonl") if "iter" in r and not r.get("eval")]
    assert [r["tokens"] for r in steps] == [r["tokens"] for r in single_steps]  # global tokens


@pytest.mark.skipif(not MLX_LAUNCH, reason="mlx.launch is not installed")
def test_single_process_checkpoint_resumes_on_two_ranks(tiny, single, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(single, out)
    # Pretend the run stopped after iteration 5: its newest checkpoint is step 5.
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"step": 5, "path": "step-000005"}))
    shutil.rmtree(out / "checkpoints" / "step-000010")
    launch_two_ranks(*tiny, out, port=39671, resume=True)
    assert_same_adapters(adapters(single), adapters(out))
