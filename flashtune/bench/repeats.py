"""``--repeats N``: the fine-tuning comparison's whole plan N times in a row, each into its own rep<i>/ folder.

Times move from run to run and machine to machine (mlx_lm.lora's 100 TinyLlama-1.1B iterations
took 14.6-20.3 s over the H100 runs README.md cites), so a headline ratio is stated with its
spread: each repeat is a complete results folder with its own report.
"""

import argparse
import copy
import tarfile
import time
from collections.abc import Callable
from pathlib import Path


def run_repeated(args: argparse.Namespace, run_once: Callable[[argparse.Namespace], int]) -> int:
    """Calls ``run_once`` for rep1 ... rep<args.repeats> under ``args.results``; archives them all with ``--archive``.

    ``--budget-s`` bounds the whole call: each repeat gets what the ones before it left, and one
    that finds too little leaves its runs for the next call (``--skip-existing`` resumes there).

    Returns:
        The largest exit status of the repeats (3 when runs were left for another call).
    """
    from flashtune.bench.finetune import default_results_dir

    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: give 1 or more")
    root = Path(args.results) if args.results else default_results_dir()
    status, started = 0, time.perf_counter()
    for rep in range(1, args.repeats + 1):
        one = copy.copy(args)
        one.results, one.repeats, one.archive = str(root / f"rep{rep}"), 1, None
        if args.budget_s is not None:  # one budget for the whole call
            one.budget_s = args.budget_s - (time.perf_counter() - started)
        print(f"repeat {rep} of {args.repeats}: {one.results}", flush=True)
        status = max(status, run_once(one))
    if args.archive and not args.dry_run:
        write_archive(root, args.archive)
    return status


def write_archive(folder: Path, path: str) -> None:
    """``folder`` as a .tar.gz at ``path`` (results carried off a machine as one file)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    print(f"archived {folder} into {path}", flush=True)
