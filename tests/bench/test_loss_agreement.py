"""flashtune.bench.loss_agreement: distances between loss curves and the noise-band verdict."""

import json
from pathlib import Path

import pytest

from flashtune.bench import loss_agreement


def write_run(folder: Path, name: str, losses):
    with open(folder / f"{name}.jsonl", "w") as f:
        for i, loss in enumerate(losses, 1):
            f.write(json.dumps({"iter": i, "loss": loss, "wall_s": 0.1}) + "\n")
        f.write(json.dumps({"iter": len(losses), "eval": True, "val_loss": 1.0}) + "\n")


def test_distances_and_verdict(tmp_path):
    script = loss_agreement
    ref = [4.0 - 0.02 * i for i in range(100)]
    write_run(tmp_path, "demo", ref)
    write_run(tmp_path, "baseline", [x * 1.02 for x in ref])  # 2% off everywhere
    write_run(tmp_path, "poc", [x * (1.01 if i % 2 else 0.99) for i, x in enumerate(ref)])  # 1%
    assert script.main([str(tmp_path)]) == 0
    table = script.compare(tmp_path, "demo", "poc")
    assert table["poc"]["mean"] == pytest.approx(0.01)
    assert table["baseline"]["max"] == pytest.approx(0.02)
    assert table["poc"]["final_loss"] == pytest.approx(sum(ref[-10:]) / 10, rel=1e-3)
    text = (tmp_path / "loss-agreement.md").read_text()
    assert "within the bf16 noise band" in text and (tmp_path / "loss-agreement.png").stat().st_size > 0


def test_a_diverging_candidate_is_outside_the_band(tmp_path):
    script = loss_agreement
    ref = [3.0] * 20
    write_run(tmp_path, "demo", ref)
    write_run(tmp_path, "practical", [3.03] * 20)
    write_run(tmp_path, "poc", [3.0 + 0.1 * i for i in range(20)])
    assert "outside" in script.verdict(script.compare(tmp_path, "demo", "poc"), "poc")


def test_missing_run_and_length_mismatch_are_named(tmp_path):
    script = loss_agreement
    write_run(tmp_path, "demo", [1.0] * 5)
    with pytest.raises(SystemExit, match="no poc.jsonl"):
        script.compare(tmp_path, "demo", "poc")
    write_run(tmp_path, "poc", [1.0] * 4)
    with pytest.raises(ValueError, match="5 vs 4|4 vs 5"):
        script.compare(tmp_path, "demo", "poc")


def test_warmup_runs_give_the_run_to_run_noise(tmp_path):
    script = loss_agreement
    (tmp_path / "cold").mkdir()
    ref = [3.0] * 20
    write_run(tmp_path, "demo", ref)
    write_run(tmp_path, "poc", [3.06] * 20)  # 2% from demo
    write_run(tmp_path / "cold", "demo", [3.03] * 20)  # 1% from the measured demo run
    write_run(tmp_path / "cold", "poc", [3.06 * 1.05] * 20)  # 5% from its own measured run
    pairs = script.noise(script.read_runs(tmp_path), script.read_runs(tmp_path / "cold"), "demo")
    assert list(pairs) == ["demo (warm-up run) vs demo", "poc (warm-up run) vs poc", "poc (warm-up run) vs demo"]
    assert pairs["demo (warm-up run) vs demo"]["mean"] == pytest.approx(0.01)
    assert pairs["poc (warm-up run) vs poc"]["mean"] == pytest.approx(0.05)
    assert pairs["poc (warm-up run) vs demo"]["mean"] == pytest.approx(3.06 * 1.05 / 3.0 - 1)
    assert script.main([str(tmp_path), "--warmups"]) == 0
    assert "| demo (warm-up run) vs demo | 1.00% |" in (tmp_path / "loss-agreement.md").read_text()


def test_warmups_without_warmup_runs_are_named(tmp_path):
    script = loss_agreement
    write_run(tmp_path, "demo", [1.0] * 5)
    write_run(tmp_path, "poc", [1.0] * 5)
    with pytest.raises(SystemExit, match="no warm-up runs"):
        script.main([str(tmp_path), "--warmups"])
