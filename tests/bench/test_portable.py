"""Portable records: machine paths become root-relative, ``python`` or ``<abs>/a/b``; nothing else moves."""

import json

import pytest

from flashtune.bench import report
from flashtune.bench.portable import portable_file, portable_path, portable_record, portable_text, run_roots

from .fixtures import write_run

ROOTS = {
    "/work/repo": "",
    "/work/repo/.device/bench-cache": "<cache>",
    ".device/bench-cache": "<cache>",
    "/tmp/r/full": "<results>",
}


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/work/repo/recipes/finetune-tinyllama-1.1b.yaml", "recipes/finetune-tinyllama-1.1b.yaml"),
        ("/work/repo/.device/bench-cache/models/tinyllama-1.1b-random", "<cache>/models/tinyllama-1.1b-random"),
        ("/work/repo/.device/bench-cache/", "<cache>"),
        ("/tmp/r/full/main/TinyLlama-1.1B/demo.jsonl.partial", "<results>/main/TinyLlama-1.1B/demo.jsonl.partial"),
        ("/opt/torch/.venv/bin/python3", "python"),
        ("/usr/bin/python3.12", "python"),
        ("/usr/bin/python", "python"),
        (
            "/tmp/ft-exports/tinyllama-1.1b-random-seed0-bfloat16",
            "<abs>/ft-exports/tinyllama-1.1b-random-seed0-bfloat16",
        ),
        ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0", "<abs>/openblas-pthread/libopenblas.so.0"),
        ("/work/repository/x/y", "<abs>/x/y"),  # shares a prefix with a root, is not under it
        ("/data", "<abs>/data"),
    ],
)
def test_each_kind_of_path(path, expected):
    assert portable_path(path, ROOTS) == expected


def test_paths_inside_longer_strings_and_prose_untouched():
    assert portable_text("from /work/repo/.device/bench-cache/models/m", ROOTS) == "from <cache>/models/m"
    assert (
        portable_text(".device/bench-cache/models/m (random-init weights)", ROOTS)
        == "<cache>/models/m (random-init weights)"
    )
    assert portable_text(".device/bench-cache", ROOTS) == "<cache>"
    assert portable_text("wrote /tmp/r/full/attention.jsonl.", ROOTS) == "wrote <results>/attention.jsonl."
    for prose in (
        "32/4 heads, 4096 tokens/s",
        "cudnn/this 0.83",
        "see https://example.com/a/b",
        "fwd+bwd 1.2 ms",
        "1/8 of the tokens",
    ):
        assert portable_text(prose, ROOTS) == prose


def test_a_relative_root_spelled_like_a_word_leaves_prose_alone():
    roots = {"results": "<results>"}
    assert portable_text("GPU results are the ones to read", roots) == "GPU results are the ones to read"
    assert portable_text("results/main/x.jsonl", roots) == "<results>/main/x.jsonl"


def test_record_rewritten_recursively_keys_and_numbers_kept():
    record = {
        "bench": {"recipe": "/work/repo/recipes/a.yaml", "batch": 4, "ratio": 0.1 + 0.2,
                  "command": ["/opt/torch/.venv/bin/python3", "-m", "flashtune.cli", "--records", "/tmp/r/full/main/m/demo.jsonl.partial",
                              "--out", "/work/repo/.device/bench-cache/ft-run-abc", "--model", "/tmp/ft-exports/m-bf16"]},
        "/work/repo/key": [None, True, 1e-30, {"nested": "/home/me/data/set"}],
    }  # fmt: skip
    out = portable_record(record, ROOTS)
    assert out["bench"]["recipe"] == "recipes/a.yaml"
    assert out["bench"]["command"] == ["python", "-m", "flashtune.cli", "--records", "<results>/main/m/demo.jsonl.partial",
                                       "--out", "<cache>/ft-run-abc", "--model", "<abs>/ft-exports/m-bf16"]  # fmt: skip
    assert out["bench"]["batch"] == 4 and out["bench"]["ratio"] == 0.1 + 0.2
    assert out["/work/repo/key"] == [None, True, 1e-30, {"nested": "<abs>/data/set"}]
    assert record["bench"]["recipe"] == "/work/repo/recipes/a.yaml"  # a copy: the input is unchanged
    assert portable_record(out, ROOTS) == out  # already portable: nothing left to rewrite


def test_file_keeps_every_number_and_the_report(tmp_path):
    path = write_run(
        tmp_path / "results", "main/TinyLlama-1.1B/demo.jsonl", suite="main", impl="demo", step_s=0.1, iters=100
    )
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["bench"]["command"] = [
        "/opt/venv/bin/python3",
        "--config",
        "/work/repo/recipes/finetune-tinyllama-1.1b.yaml",
    ]
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n\n")
    before = report.summarize_run(path)

    out = portable_file(path, ROOTS, out=tmp_path / "kept" / "demo.jsonl")
    new = out.read_text().splitlines()
    assert json.loads(new[0])["bench"]["command"] == ["python", "--config", "recipes/finetune-tinyllama-1.1b.yaml"]
    assert new[1:] == [line for line in lines[1:] if line.strip()]  # records without paths: byte for byte
    after = report.summarize_run(out)
    for key in (
        "total_wall_s",
        "steady_tokens_per_s",
        "peak_mem_gb",
        "final_loss",
        "final_val_loss",
        "iters",
        "status",
    ):
        assert after[key] == before[key], key


def test_file_rewritten_in_place_and_bad_lines_named(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"data": "/work/repo/data/x"}) + "\n")
    assert portable_file(path, ROOTS) == path and json.loads(path.read_text()) == {"data": "data/x"}
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2"):
        portable_file(path, ROOTS)


def test_run_roots_name_each_folder_as_given_and_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".cache").mkdir()
    roots = run_roots(results=tmp_path / "out", cache=".cache", repo=tmp_path)
    assert roots == {
        str(tmp_path): "",
        str(tmp_path / "out"): "<results>",
        ".cache": "<cache>",
        str(tmp_path / ".cache"): "<cache>",
    }
    assert (
        portable_text(f"{tmp_path}/.cache/models/m and .cache/data/d", roots) == "<cache>/models/m and <cache>/data/d"
    )
