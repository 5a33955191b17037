"""flashtune installed from its wheel (not editable) works outside the checkout: the recipes,
data and model configs that commands need ship inside the package."""

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(command, **kwargs):
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)])
    (built,) = dist.glob("flashtune-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; the dependencies come from this environment, after it
    on sys.path (a path listed in a .pth file does not run that folder's own .pth files, so this
    environment's editable install of flashtune stays out)."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = root / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    paths = sysconfig.get_paths()
    (site / "dependencies.pth").write_text("\n".join(dict.fromkeys([paths["purelib"], paths["platlib"]])) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    return root


def test_wheel_ships_what_commands_read_and_no_developer_notes(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "flashtune/recipes/finetune-smollm2-135m.yaml",
        "flashtune/datasets/capitals/train.jsonl",
        "flashtune/models/configs/TinyLlama-1.1B-Chat-v1.0.json",
        "flashtune/attention/kernels/flash_attention.cu",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.endswith(".md") and "datasets/" not in n], "docs belong in docs/, not the wheel"


def test_installed_commands_run_outside_the_checkout(venv, tmp_path):
    flashtune = str(venv / "bin" / "flashtune")
    where = run(
        [str(venv / "bin" / "python"), "-c", "import flashtune; print(flashtune.__file__)"], cwd=tmp_path
    ).stdout
    assert str(venv) in where and str(REPO) not in where, where
    plan = run([flashtune, "bench", "finetune", "--dry-run"], cwd=tmp_path).stdout
    assert "finetune-smollm2-135m.yaml" in plan or "SmolLM2-135M" in plan, plan
    trained = run([flashtune, "train", "--iters", "2", "--out", str(tmp_path / "run")], cwd=tmp_path)
    assert "2 iterations" in trained.stdout, trained.stdout
    assert (tmp_path / "run" / "adapters.safetensors").is_file()
    packed = run([flashtune, "train", "--iters", "1", "--pack", "--out", str(tmp_path / "packed")], cwd=tmp_path)
    assert "1 iteration in" in packed.stdout and "of slots filled" in packed.stdout, packed.stdout
    context = [flashtune, "bench", "context", "--lengths", "512", "--impls", "practical", "--steps", "1"]
    run([*context, "--results", str(tmp_path / "bench"), "--cache-dir", str(tmp_path / "cache")], cwd=tmp_path)
    (row,) = [json.loads(line) for line in (tmp_path / "bench/context/smollm2-135m.jsonl").read_text().splitlines()][1:]
    assert row["status"] == "ok" and row["length"] == 512 and row["peak_gb"] > 0, row
