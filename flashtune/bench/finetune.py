"""The fine-tuning comparison: every attention implementation and mlx_lm.lora, same data and settings.

Suites (each run a fresh subprocess, its per-iteration JSONL under the results folder):
- ``main``: 100 LoRA iterations per model with each implementation (``flashtune train``) and
  with mlx-lm's own trainer (``mlx_lm lora`` through `flashtune.bench.peer`), same data, seed,
  LoRA and optimizer settings, from ``recipes/finetune-<model>.yaml``. On a GPU each measured
  run follows a warm-up run of the same tool (``main/<model>/cold/``, kept and reported on its
  own), by default just as long, so MLX's on-disk kernel cache holds the kernels of every batch
  shape the measured run compiles, for every tool alike. (A 5-iteration warm-up left mlx_lm.lora,
  which compiles ~16 shapes, partly cold: its 100 iterations took 19.0, 16.4 and 14.6 s in
  three runs in a row on one H100: benchmarks/h100/finetune-repeats/repeats.md.) Beside them,
  Hugging Face transformers + PEFT on PyTorch (``hf-peft``, ``hf-peft+compile``:
  `flashtune.bench.hf_peft`) on the same weights and batches, where torch with CUDA is installed
  (skipped with one line elsewhere).
- ``sweep``: ``fixed_length`` runs at several sequence lengths with the same tokens per step
  (8x512 ... 1x4096), from ``recipes/sweep-<model>.yaml``.
- ``packing`` (only when asked: ``--suites packing``): one pass over the same examples, packed
  and padded, per implementation, and with mlx_lm.lora, learning rate matched per token
  (`flashtune.bench.packing`), from ``recipes/packing-<model>.yaml``.

``--fine-tune-type dora`` (or ``full``) trains that way in every run, flashtune's and
mlx_lm.lora's alike; such runs go under ``<results>/dora/`` (``full/``), carry the type in their
bench header, and the report titles their tables with it, so they never mix with LoRA runs.

Defaults per device: on a GPU, TinyLlama-1.1B and Qwen2.5-1.5B on variable-length text of
300-1020 tokens (packing: that and chat-like text, median 200 tokens, up to 2048); on a CPU, the
embedded SmolLM2-135M on the shipped dataset with a small sweep (packing: part of the shipped
dataset and a small chat-like set, without ``poc``, which runs ``practical`` on a CPU; ``--big``
asks for the big models). Real weights are used when cached, else architecture-exact
random weights (labelled in every record and table; see `flashtune.bench.assets`).

Runs are resumable: each JSONL is written as ``.partial`` and renamed when the run ends, ok or
failed (a failure, e.g. out of memory, is a result: ``{"status": "failed", ...}``).
``--skip-existing`` skips finished runs; ``--budget-s`` starts no run that would not finish in
time (from the durations seen so far) and stops one that overruns, leaving it for the next call.
``--repeats N`` runs the whole plan N times, into ``rep1/`` ... ``repN/`` (`flashtune.bench.repeats`).
"""

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from flashtune.bench import hf_peft, packing
from flashtune.bench.assets import prepare_data, prepare_model
from flashtune.bench.hf_peft import HF_IMPLS
from flashtune.bench.peer import TOOL
from flashtune.bench.repeats import run_repeated, write_archive
from flashtune.bench.runner import Bench, mlx_lm_config  # noqa: F401 (mlx_lm_config: re-exported)
from flashtune.bench.runs import Run, recipe_path
from flashtune.config import FINE_TUNE_TYPES, RECIPES_DIR

IMPLS = ("baseline", "practical", "demo", "poc")
SUITES = ("main", "sweep", "packing")
GPU_MODELS = ("TinyLlama-1.1B", "Qwen2.5-1.5B")
CPU_MODELS = ("SmolLM2-135M",)
DEFAULTS = {  # per device kind: what `make reproduce-finetune` runs with no options
    "gpu": {"models": GPU_MODELS, "lengths": (512, 1024, 2048, 4096), "sweep_tokens": 4096, "warmup_iters": -1,
            "pack_datasets": ("timing", "chat"), "pack_impls": (*packing.PACK_IMPLS, TOOL)},
    "cpu": {"models": CPU_MODELS, "lengths": (64, 128, 256), "sweep_tokens": 256, "warmup_iters": 0,
            "pack_datasets": ("capitals", "chat-small"), "pack_impls": ("practical", "demo", TOOL)},
}  # fmt: skip


def check_train_flags(text: str) -> list[str]:
    """Splits --train-flags and checks them against `flashtune train`'s own parser, before any run."""
    from flashtune import config as config_module

    flags = shlex.split(text)
    parser = argparse.ArgumentParser(prog="flashtune train", add_help=False)
    config_module.add_arguments(parser)
    _, unknown = parser.parse_known_args(flags)
    if unknown:
        raise SystemExit(
            f"--train-flags: {' '.join(unknown)} not understood by flashtune train; see flashtune train -h"
        )
    return flags


def plan(models: list[str], impls: list[str], suites: list[str], lengths: list[int], sweep_tokens: int,
         warmup_iters: int, sweep_iters: int | None, sweep_impls: list[str], iters: int | None = None,
         fine_tune_type: str = "lora", pack_datasets: Sequence[str] = (), pack_impls: Sequence[str] = (),
         pack_spread_runs: int = packing.SPREAD_RUNS) -> list[Run]:  # fmt: skip
    """The runs, in order: per model, each tool's warm-up then measured run, then the sweep, then packing."""
    runs = []
    for model in models:
        if "main" in suites:
            for impl in impls:
                if warmup_iters:  # < 0: as long as the measured run
                    runs.append(
                        Run(
                            "cold",
                            model,
                            impl,
                            iters=iters if warmup_iters < 0 else warmup_iters,
                            fine_tune_type=fine_tune_type,
                        )
                    )
                runs.append(Run("main", model, impl, iters=iters, fine_tune_type=fine_tune_type))
        if "sweep" in suites:
            for length in lengths:
                for impl in sweep_impls:
                    runs.append(
                        Run("sweep", model, impl, length, max(sweep_tokens // length, 1), sweep_iters, fine_tune_type)
                    )
        if "packing" in suites:
            runs += packing.plan_runs(
                [model], list(pack_datasets), list(pack_impls), warmup_iters, fine_tune_type, pack_spread_runs
            )
    return runs


def default_results_dir() -> Path:
    from flashtune import env

    return Path("results") / f"{date.today().isoformat()}-{env.short_device_tag()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `flashtune bench finetune` and scripts/reproduce_finetune.py."""
    parser.add_argument("--results", help="results folder (default: results/<date>-<device> under the current folder)")
    parser.add_argument(
        "--device",
        choices=["auto", "gpu", "cpu"],
        default="auto",
        help="which defaults to use (default: what MLX runs on)",
    )
    parser.add_argument(
        "--big", action="store_true", help="on a CPU: the GPU defaults (TinyLlama-1.1B, Qwen2.5-1.5B; slow)"
    )
    parser.add_argument("--models", help="comma list of models (default: per device)")
    parser.add_argument("--impls", help=f"comma list from {', '.join([*IMPLS, TOOL, *HF_IMPLS])} (default: all)")
    parser.add_argument("--suites", default="main,sweep", help="comma list: main, sweep, packing (default: main,sweep)")
    parser.add_argument(
        "--lengths", help="sweep lengths, comma list (default: 512,1024,2048,4096 on GPU; 64,128,256 on CPU)"
    )
    parser.add_argument(
        "--sweep-tokens", type=int, help="tokens per sweep step; batch = this / length (default: 4096 GPU, 256 CPU)"
    )
    parser.add_argument("--sweep-impls", help=f"comma list for the sweep (default: {', '.join(IMPLS)})")
    parser.add_argument("--sweep-iters", type=int, help="sweep iterations (default: the sweep recipe's)")
    parser.add_argument("--iters", type=int, help="main-suite iterations (default: the recipe's, 100)")
    _add_packing_arguments(parser)
    parser.add_argument(
        "--fine-tune-type",
        choices=FINE_TUNE_TYPES,
        default="lora",
        help="what every run trains, flashtune's and "
        "mlx_lm.lora's alike: lora, dora or full (dora and full results go under <results>/<type>/; default: lora)",
    )
    parser.add_argument(
        "--warmup-iters",
        type=int,
        help="iterations of the warm-up run before each main run (0: none, -1: as many as the measured run; default -1 GPU, 0 CPU)",
    )
    parser.add_argument("--random-init", action="store_true", help="random weights even where real ones are available")
    parser.add_argument(
        "--shipped-data", action="store_true", help="main suite on the shipped dataset instead of 300-1020-token text"
    )
    parser.add_argument("--skip-existing", action="store_true", help="skip runs whose JSONL is already there (resume)")
    parser.add_argument("--retry-failed", action="store_true", help="with --skip-existing: run failed runs again")
    parser.add_argument(
        "--budget-s", type=float, help="start no run that would end after this many seconds; stop one that would"
    )
    parser.add_argument("--cache-dir", help="model folders, data, run scratch (default: ~/.cache/flashtune/bench)")
    parser.add_argument(
        "--export-dir", help="where mlx_lm's model folders with weights go (default: <cache-dir>/exports)"
    )
    parser.add_argument(
        "--recipes", default=str(RECIPES_DIR), help="recipe folder (default: the recipes shipped in the package)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the timing data and random weights")
    parser.add_argument(
        "--train-flags",
        default="",
        help="extra `flashtune train` flags for every flashtune run, e.g. "
        "'--no-fuse-projections' (ablations; mlx_lm.lora runs are unchanged; recorded in each run's command)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip report.md and plots at the end")
    parser.add_argument("--archive", help="also write the results folder as this .tar.gz (to carry it off a device)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run the whole plan N times, into rep1/ ... repN/ of the results folder"
    )
    hf_peft.add_arguments(parser)


def _add_packing_arguments(parser) -> None:
    """The packing suite's options (`flashtune.bench.packing`)."""
    parser.add_argument(
        "--pack-datasets",
        help=f"packing suite: comma list from {', '.join(packing.DATASETS)} "
        "(default: timing,chat on GPU; capitals,chat-small on CPU)",
    )
    parser.add_argument(
        "--pack-impls",
        help=f"packing suite: comma list from {', '.join((*packing.PACK_IMPLS, TOOL))} "
        f"(default: all on GPU; practical,demo,{TOOL} on CPU, where poc runs practical)",
    )
    parser.add_argument(
        "--pack-spread-runs",
        type=int,
        default=packing.SPREAD_RUNS,
        help="packing suite: padded runs of the first implementation with seeds 1..N, whose spread is the "
        "validation-loss yardstick (default: %(default)s; 0: none)",
    )


def _split(text: str, cast=str) -> list:
    return [cast(x) for x in text.split(",") if x]


def _plan_from_args(args: argparse.Namespace, kind: str):
    """The runs the options ask for, checked before any work; also the sweep lengths and hf-peft's options."""
    defaults = DEFAULTS["gpu" if kind == "gpu" or args.big else "cpu"]
    choices = [*IMPLS, TOOL, *HF_IMPLS]
    models = _split(args.models) if args.models else list(defaults["models"])
    impls = _split(args.impls) if args.impls else choices
    lengths = _split(args.lengths, int) if args.lengths else list(defaults["lengths"])
    warmup = args.warmup_iters if args.warmup_iters is not None else (defaults["warmup_iters"] if kind == "gpu" else 0)
    sweep_impls = _split(args.sweep_impls) if args.sweep_impls else list(IMPLS)
    suites = _split(args.suites)
    for name in {*impls, *sweep_impls} - set(choices):
        raise SystemExit(f"unknown implementation {name!r}; choose from {', '.join(choices)}")
    for name in set(suites) - set(SUITES):
        raise SystemExit(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    pack_datasets = _split(args.pack_datasets) if args.pack_datasets else list(defaults["pack_datasets"])
    pack_impls = _split(args.pack_impls) if args.pack_impls else list(defaults["pack_impls"])
    hf_options = None
    if {"main", "sweep"} & set(suites):  # the packing suite runs no hf-peft
        impls, sweep_impls, hf_options = hf_peft.keep_available(
            impls, sweep_impls, args.torch_python, args.hf_peft_device
        )
    sweep_tokens = args.sweep_tokens or defaults["sweep_tokens"]
    try:
        runs = plan(models, impls, suites, lengths, sweep_tokens, warmup, args.sweep_iters, sweep_impls, args.iters,
                    args.fine_tune_type, pack_datasets, pack_impls, args.pack_spread_runs)  # fmt: skip
    except ValueError as error:  # an unknown packing dataset or implementation
        raise SystemExit(str(error)) from None
    max_length = max(lengths) if "sweep" in suites else 0
    return runs, models, max_length, hf_options


def _announce(args: argparse.Namespace, kind: str, runs: list, results: Path, cache: Path) -> None:
    print(
        f"{len(runs)} {args.fine_tune_type} runs into {results} ({kind} defaults{', big models' if args.big else ''}; cache {cache})",
        flush=True,
    )
    if kind == "cpu" and not (args.big or args.models):
        print(
            "CPU-only machine: the comparison runs on the embedded SmolLM2-135M with small data (the shipped dataset, "
            "a small sweep; packing: a small chat-like set too; --big: TinyLlama-1.1B and Qwen2.5-1.5B, slowly)",
            flush=True,
        )


def _finish(args: argparse.Namespace, bench: Bench, results: Path) -> int:
    """Prints the counts, writes the report and the archive; 3 when runs are left for another call."""
    c = bench.counts
    print(
        f"done: {c['done']} runs ({c['failed']} failed), {c['skipped']} skipped (already there), {c['left']} left for another call",
        flush=True,
    )
    if args.report:
        from flashtune.bench.report import write_report

        print(f"report: {write_report(results)}", flush=True)
    if args.archive:
        write_archive(results, args.archive)
    if c["left"]:
        print("some runs are left: run the same command again (with --skip-existing) to finish them", flush=True)
    return 3 if c["left"] else 0


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the comparison as the options say; returns 0 when nothing is left to run."""
    from flashtune import env
    from flashtune.models import resolve_dtype

    if args.repeats != 1:
        return run_repeated(args, run_from_args)
    kind = args.device if args.device != "auto" else ("cpu" if env.backend() == "cpu" else "gpu")
    runs, models, max_length, hf_options = _plan_from_args(args, kind)
    train_flags = check_train_flags(args.train_flags)
    results = Path(args.results) if args.results else default_results_dir()
    cache = Path(args.cache_dir or os.environ.get("FLASHTUNE_BENCH_CACHE", "~/.cache/flashtune/bench")).expanduser()
    recipes = Path(args.recipes)
    for run in runs:
        if not recipe_path(run.suite, run.model, recipes).is_file():
            raise SystemExit(f"no recipe {recipe_path(run.suite, run.model, recipes)} for {run.name}")
    _announce(args, kind, runs, results, cache)
    if args.dry_run:
        print("\n".join(f"  {r.name} -> {r.relpath}" for r in runs))
        return 0
    results.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    dtype = str(resolve_dtype(None)).split(".")[-1]
    setups = {
        m: prepare_model(m, cache, dtype, args.seed, max_length, args.random_init, args.export_dir) for m in models
    }
    bench = Bench(
        results, cache, recipes, setups, {}, args.skip_existing, args.retry_failed, args.budget_s, train_flags
    )
    bench.hf = hf_options
    passes: dict[tuple, packing.PassPlan] = {}
    for i, run in enumerate(runs):
        if run.is_warmup and bench.should_skip(runs[i + 1]):  # a warm-up belongs to its measured run
            continue
        _prepare(bench, run, args, passes)
        bench.execute(run)
    return _finish(args, bench, results)


def _prepare(bench: Bench, run: Run, args: argparse.Namespace, passes: dict[tuple, packing.PassPlan]) -> None:
    """Writes the run's data once and, in the packing suite, sets its pass from that data."""
    from flashtune import env

    setup = bench.setups[run.model]
    key = run.data_key
    if key not in bench.data:  # the embedded SmolLM2 trains on the shipped dataset by default
        if run.dataset:
            bench.data[key] = packing.prepare_dataset(run.dataset, setup, bench.cache, args.seed)
        else:
            shipped = run.suite != "sweep" and (args.shipped_data or setup.embedded)
            bench.data[key] = (
                None if shipped else prepare_data(setup, bench.cache, args.seed, run.length, run.batch or 1)
            )
    if run.dataset:
        if key not in passes:
            passes[key] = plan = packing.measure_pass(bench.recipes, bench.data[key], setup, env.backend())
            print(f"  {run.model} {run.dataset}: one pass of {plan.examples} examples is {plan.padded_steps} padded steps or "
                  f"{plan.packed_steps} packed steps of {plan.batch_size}x{plan.pack_length} (packed learning rate x{plan.lr_scale:.3g})", flush=True)  # fmt: skip
        packing.apply_pass(run, passes[key])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reproduce_finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
