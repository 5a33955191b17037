"""--repeats N: the whole plan N times, each into its own rep<i>/ folder with its own report."""

import argparse
import tarfile
import time

import pytest

from flashtune.bench import finetune
from flashtune.bench.repeats import run_repeated


def test_each_repeat_gets_its_own_folder_and_the_worst_status_wins(tmp_path, capsys):
    seen = []

    def once(args: argparse.Namespace) -> int:
        seen.append((args.results, args.repeats, args.archive))
        (tmp_path / args.results / "report.md").parent.mkdir(parents=True)
        (tmp_path / args.results / "report.md").write_text("a report")
        return 3 if len(seen) == 2 else 0  # the second repeat left a run for another call

    args = argparse.Namespace(
        results=str(tmp_path / "r"), repeats=3, archive=str(tmp_path / "all.tgz"), dry_run=False, budget_s=None
    )
    assert run_repeated(args, once) == 3
    assert seen == [(str(tmp_path / "r" / f"rep{i}"), 1, None) for i in (1, 2, 3)]
    with tarfile.open(tmp_path / "all.tgz") as tar:
        assert sorted(n for n in tar.getnames() if n.endswith(".md")) == [f"r/rep{i}/report.md" for i in (1, 2, 3)]
    assert "repeat 3 of 3" in capsys.readouterr().out


def test_the_cli_plans_every_repeat(tmp_path, capsys):
    argv = [
        "--dry-run",
        "--device",
        "cpu",
        "--suites",
        "main",
        "--impls",
        "demo",
        "--repeats",
        "2",
        "--results",
        str(tmp_path),
    ]
    assert finetune.main(argv) == 0
    out = capsys.readouterr().out
    assert f"1 lora runs into {tmp_path / 'rep1'}" in out and f"1 lora runs into {tmp_path / 'rep2'}" in out
    assert not (tmp_path / "rep1").exists()  # a dry run writes nothing
    with pytest.raises(SystemExit, match="--repeats 0: give 1 or more"):
        finetune.main([*argv[:-3], "0", *argv[-2:]])


def test_one_budget_for_every_repeat(tmp_path):
    budgets = []

    def once(args: argparse.Namespace) -> int:
        budgets.append(args.budget_s)
        time.sleep(0.05)
        return 0

    run_repeated(
        argparse.Namespace(results=str(tmp_path), repeats=3, archive=None, dry_run=False, budget_s=100.0), once
    )
    assert budgets[0] <= 100.0 and budgets[0] - budgets[1] >= 0.05 and budgets[1] - budgets[2] >= 0.05
