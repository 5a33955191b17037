"""``python -m flashtune.patch``: runs unmodified scripts and modules with mlx-lm models patched."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

import flashtune  # noqa: F401
from flashtune import attention
from flashtune.patch.runner import REPORT_ENV, split_argv
from tests.tiny_models import write_text_dataset, write_tiny_hf_model

LLAMA_ENTRY = {"class": "mlx_lm.models.llama.Model", "model_type": "llama", "blocks": 2}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A tiny HF-format Llama folder and a text dataset, written once for this file."""
    root = tmp_path_factory.mktemp("tiny_hf")
    return write_tiny_hf_model(root / "model"), write_text_dataset(root / "data")


def run_patch(args, cwd, report=None, prefix=(sys.executable, "-m", "flashtune.patch")):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(REPORT_ENV, None)
    if report is not None:
        env[REPORT_ENV] = str(report)
    return subprocess.run(
        [*prefix, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_split_argv_gives_the_target_everything_after_it():
    assert split_argv(["--attn", "demo", "s.py", "--attn", "x", "-m", "y"]) == (
        ["--attn", "demo"],
        ("script", "s.py"),
        ["--attn", "x", "-m", "y"],
    )
    assert split_argv(["--attn=demo", "-m", "mlx_lm", "lora", "--train"]) == (
        ["--attn=demo"],
        ("module", "mlx_lm"),
        ["lora", "--train"],
    )
    assert split_argv(["--attn", "demo", "-m"]) == (["--attn", "demo"], None, [])


def test_bad_name_exits_2_before_the_script_starts(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("open('ran', 'w').close()\n")
    result = run_patch(["--attn", "flash9", script], tmp_path)
    assert result.returncode == 2
    assert f"valid names: {', '.join(attention.names())}" in result.stderr
    assert not (tmp_path / "ran").exists()
    assert run_patch(["--attn", "demo"], tmp_path).returncode == 2  # no target


PLAIN_SCRIPT = """\
import json, sys
import mlx.core as mx
import mlx_lm
from mlx_lm.models import llama

loaded, _ = mlx_lm.load(sys.argv[1])
built = llama.Model(loaded.args)  # built from the class, not through a loader
for model in (loaded, built):
    mx.eval(model(mx.array([[1, 2, 3, 4, 5]])))
print(json.dumps({
    "argv": sys.argv[1:], "name": __name__, "path0": sys.path[0],
    "classes": [type(m.layers[0].self_attn).__name__ for m in (loaded, built)],
}))
sys.exit(3)
"""


def test_plain_script_using_mlx_lm_load_is_patched(tiny_hf, tmp_path):
    model_dir, _ = tiny_hf
    script, report = tmp_path / "plain.py", tmp_path / "report.json"
    script.write_text(PLAIN_SCRIPT)
    result = run_patch(["--attn", "baseline", script, model_dir, "--flag"], tmp_path, report)
    assert result.returncode == 3, result.stderr  # the script's own exit code
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {
        "argv": [str(model_dir), "--flag"],
        "name": "__main__",
        "path0": str(tmp_path),
        "classes": ["PatchedAttention", "PatchedAttention"],
    }
    said = [line for line in result.stderr.splitlines() if "patched 2 attention blocks" in line]
    assert len(said) == 1 and "with 'baseline'" in said[0], result.stderr  # once, not per model
    assert "patched 2 models with 'baseline'" in result.stderr
    data = json.loads(report.read_text())
    assert data["exit_code"] == 3 and len(data["models"]) == 2
    assert data["models"][0] == LLAMA_ENTRY
    assert data["calls"] == {"baseline": 4}  # 2 models x 2 blocks x 1 forward


SHOW_ITSELF = """\
import json, sys
print(json.dumps({"argv": sys.argv, "name": __name__, "path0": sys.path[0], "file": __file__}))
"""


@pytest.mark.parametrize("how", [["-m", "tinymod"], ["sub/tinyscript.py"]])
def test_target_runs_as_plain_python_would(tmp_path, how):
    (tmp_path / "sub").mkdir()
    (tmp_path / "tinymod.py").write_text(SHOW_ITSELF)
    (tmp_path / "sub" / "tinyscript.py").write_text(SHOW_ITSELF + "sys.exit('bye')\n")
    direct = run_patch(["a", "--b"], tmp_path, prefix=(sys.executable, *how))
    result = run_patch(["--attn", "demo", *how, "a", "--b"], tmp_path)
    assert result.returncode == direct.returncode, result.stderr
    seen, expected = json.loads(result.stdout), json.loads(direct.stdout)
    # runpy keeps a script's __file__ as typed; Python 3.9+ makes it absolute.
    assert (tmp_path / seen.pop("file")).resolve() == Path(expected.pop("file")).resolve()
    assert seen == expected
    assert "nothing was patched" in result.stderr
    assert "Warning" not in result.stderr  # e.g. runpy's about re-running an imported module
    if how[0] != "-m":
        assert direct.returncode == 1 and result.stderr.endswith("bye\n")


def test_mlx_lm_lora_cli_end_to_end(tiny_hf, tmp_path):
    model_dir, data_dir = tiny_hf
    adapters, report = tmp_path / "adapters", tmp_path / "report.json"
    result = run_patch(
        [
            "--attn",
            "practical",
            "-m",
            "mlx_lm",
            "lora",
            "--model",
            model_dir,
            "--train",
            "--data",
            data_dir,
            "--iters",
            3,
            "--batch-size",
            2,
            "--num-layers",
            2,
            "--max-seq-length",
            64,
            "--val-batches",
            1,
            "--steps-per-report",
            1,
            "--adapter-path",
            adapters,
        ],
        tmp_path,
        report,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "patched 2 attention blocks of llama model" in result.stderr
    data = json.loads(report.read_text())
    assert data["models"] == [LLAMA_ENTRY]
    assert data["calls"]["practical"] > 0, data  # the patched implementation ran
    # Adapters keep mlx-lm's parameter names, so unpatched mlx-lm loads them.
    weights = mx.load(str(adapters / "adapters.safetensors"))
    assert "model.layers.0.self_attn.q_proj.lora_a" in weights
    from mlx_lm.utils import load

    model, _ = load(str(model_dir), adapter_path=str(adapters))
    assert type(model.layers[0].self_attn).__name__ == "Attention"
    params = dict(tree_flatten(model.parameters()))
    assert all(mx.array_equal(params[k], w) for k, w in weights.items())
