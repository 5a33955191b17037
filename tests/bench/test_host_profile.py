"""flashtune.bench.host_profile: its first-step split runs end to end, and its py-spy summary counts
only the samples inside the pipelined loop."""

import json
import subprocess
import sys
from pathlib import Path

from flashtune.bench import host_profile
from tests.tiny_models import write_tiny_hf_model

ROOT = Path(__file__).resolve().parents[2]


def run_on_tiny_model(tmp_path, mode, length):
    """The script's stdout for ``mode`` on a tiny random Llama, batch 2 x ``length``."""
    model = write_tiny_hf_model(tmp_path / "llama", model_type="llama")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flashtune.bench.host_profile",
            mode,
            "--model",
            str(model),
            "--batch",
            "2",
            "--length",
            str(length),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_first_step_reports_every_lap(tmp_path):
    laps = json.loads(run_on_tiny_model(tmp_path, "first-step", 64))["ms"]
    for step in ("step 1", "step 2", "steady step", "new shape 2x56"):
        for part in ("trace", "dispatch", "wait"):
            assert laps[f"{step}: {part}"] >= 0
    assert (
        any(name.startswith("cuDNN SDPA") for name in laps) and "1 GB allocation (cache cleared): second call" in laps
    )


def test_graph_counts_the_fused_steps_primitives(tmp_path):
    lines = run_on_tiny_model(tmp_path, "graph", 32).splitlines()
    nodes, kernels = int(lines[0].split()[0]), int(lines[0].split()[2])
    counts = {line.split()[1]: int(line.split()[0]) for line in lines[1:]}
    assert sum(counts.values()) == nodes and 0 < kernels < nodes
    # Two LoRA'd blocks of four projection groups (q/k/v, o, gate/up, down), each a base matmul
    # and two LoRA matmuls forward, more backward; elementwise work fused by mx.compile.
    assert counts["Matmul"] >= 2 * 4 * 3 and any(name.startswith("Compiled") for name in counts)


def test_summary_counts_only_the_steady_loop(tmp_path):
    raw = tmp_path / "steady.txt"
    raw.write_text(
        "<module> (x.py:1);steady_loop (x.py:9);mlx::core::eval_impl;mlx::core::gpu::eval;mlx::core::Matmul::eval_gpu;cublasLtMatmul 3\n"
        "<module> (x.py:1);steady_loop (x.py:9);mlx::core::eval_impl;mlx::core::gpu::eval;mlx::core::Compiled::eval_gpu 1\n"
        "<module> (x.py:1);build (x.py:5);load_model 96\n"
    )
    text = host_profile.summarize(raw)
    assert text.startswith("4 samples inside steady_loop")
    assert " 75.0%  mlx::core::Matmul::eval_gpu" in text and " 25.0%  mlx::core::Compiled::eval_gpu" in text
    assert "load_model" not in text
