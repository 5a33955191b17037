"""`flashtune bench context`: peak memory and speed of one training sequence of growing length.

For one model, every (implementation, length) trains a few steps on single sequences of exactly
``length`` tokens, each run in its own process (`flashtune.bench.runner`): flashtune with each
attention implementation and its best memory settings (chunked loss, grad checkpointing, LoRA rank
8 on every block, batch 1), and mlx-lm's own trainer with and without its ``--grad-checkpoint``.
A run that runs out of memory is a row of the results, and the longer lengths of that
implementation are not tried. Lengths may not exceed the model's context.

Writes, under ``<results>/context/``: ``<model>.jsonl`` (a run_info header, then one row per run:
``impl, length, status`` (ok / oom / error), ``peak_gb, step_s, tokens_per_s, loss``), the per-run
records beside it, ``<model>.md`` (the table) and ``<model>.png`` (peak GB and tokens/s against
length). ``step_s`` is the median step after the first (which compiles); ``tokens_per_s`` is
``length / step_s``.
"""

import argparse
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from flashtune.bench.peer import PEER_GC, TOOL, is_peer
from flashtune.bench.portable import portable_file, run_roots
from flashtune.bench.runner import PACKAGE_PARENT
from flashtune.bench.runs import Run, recipe_path

FIRST_LENGTH = 2048  # default lengths double from here to the model's context
DEFAULT_STEPS = 3  # the first compiles; the median of the others is the step time
STATUSES = ("ok", "oom", "error")


def implementations() -> list[str]:
    """Every attention implementation (at call time: nothing chosen at import), then mlx_lm's two runs."""
    from flashtune import attention

    return [*attention.names(), TOOL, PEER_GC]


@dataclass(frozen=True)
class ModelFacts:
    """What the plan needs from a model's config, read without loading weights."""

    name: str
    context: int  # max_position_embeddings
    n_layers: int
    vocab_size: int


def model_facts(name: str) -> ModelFacts:
    """Context, depth and vocabulary of ``name`` (an alias with a shipped config, or a local HF folder).

    Raises:
        ValueError: unknown model, or one whose config.json is not available without loading it.
    """
    from flashtune import models
    from flashtune.models.random_init import shipped_config

    spec = models.resolve(name)
    if spec.config_name:
        config = shipped_config(spec.config_name)
    elif spec.source == "local":
        config = json.loads((Path(spec.path) / "config.json").read_text())
    else:
        raise ValueError(f"{name}: bench context needs a model alias or a local HF folder with config.json")
    return ModelFacts(
        name, int(config["max_position_embeddings"]), int(config["num_hidden_layers"]), int(config["vocab_size"])
    )


def default_lengths(context: int, first: int = FIRST_LENGTH) -> list[int]:
    """Doubling from ``first`` while within ``context`` (just ``[context]`` when it is shorter)."""
    lengths = []
    length = first
    while length <= context:
        lengths.append(length)
        length *= 2
    return lengths or [context]


def parse_lengths(text: str | None, facts: ModelFacts) -> list[int]:
    """``--lengths``: a comma list, where ``A,...,B`` doubles from A to B; default `default_lengths`.

    Raises:
        ValueError: a malformed list, a length below 2, or one above the model's context (named).
    """
    if not text:
        return default_lengths(facts.context)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if len(parts) == 3 and parts[1] == "...":
            first, last = int(parts[0]), int(parts[2])
            lengths = [L for L in default_lengths(last, first) if L >= first]
        else:
            lengths = [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"--lengths {text!r}: expected a comma list of token counts, e.g. 2048,4096 or 2048,...,32768"
        ) from None
    for length in lengths:
        if length < 2:
            raise ValueError(f"--lengths: {length} is too short; a training sequence has at least 2 tokens")
        if length > facts.context:
            raise ValueError(f"--lengths: {length} tokens exceed the context of {facts.name}, {facts.context} tokens")
    return sorted(set(lengths))


def parse_impls(text: str | None) -> list[str]:
    """``--impls``: a comma list of `implementations` (default: all of them)."""
    valid = implementations()
    if not text:
        return valid
    impls = [p.strip() for p in text.split(",") if p.strip()]
    for impl in impls:
        if impl not in valid:
            raise ValueError(f"--impls: unknown implementation {impl!r}; choose from {', '.join(valid)}")
    return impls


def plan(impls: list[str], lengths: list[int]) -> list[tuple]:
    """(length, impl) pairs, shortest length first, so an out-of-memory run can stop longer ones."""
    return [(length, impl) for length in lengths for impl in impls]


def recipe(facts: ModelFacts, steps: int) -> dict:
    """The settings every run shares (the bench adds the shape, flashtune runs add their memory flags)."""
    return {
        "iters": steps, "batch_size": 1, "lora_layers": facts.n_layers, "lora_rank": 8,
        "steps_per_eval": 0, "steps_per_save": 0, "sample": False,
    }  # fmt: skip


MEMORY_SETTINGS = {"chunked_loss": True, "grad_checkpoint": True}  # flashtune's best memory settings


def run_settings(impl: str, length: int) -> dict:
    """The `flashtune train` settings one run adds to the recipe: one sequence of ``length`` tokens
    per step (its ``length - 1`` inputs padded to ``length``), and flashtune's memory settings, or
    for mlx_lm lora whether it checkpoints."""
    shape = {"fixed_length": length, "batch_size": 1, "max_seq_length": length}
    if is_peer(impl):
        return dict(shape, grad_checkpoint=impl == PEER_GC)
    return dict(shape, **MEMORY_SETTINGS)


def row_of(summary: dict, length: int) -> dict:
    """One results row from a run summary (`flashtune.bench.report.summarize_run`)."""
    status = "ok" if summary["status"] == "ok" else ("oom" if summary.get("oom") else "error")
    row = {"impl": summary["impl"], "length": length, "status": status, "peak_gb": summary.get("peak_mem_gb"),
           "step_s": None, "tokens_per_s": None, "loss": None, "run": summary.get("path")}  # fmt: skip
    if status == "ok":
        row["step_s"] = summary["median_step_s"]
        row["tokens_per_s"] = length / summary["median_step_s"]
        row["loss"] = summary["losses"][-1][1]
    else:
        row["error"] = (summary.get("error") or "").splitlines()[-1:]
    return row


def progress_line(row: dict) -> str:
    head = f"  L={row['length']} {row['impl']}: "
    if row["status"] == "ok":
        return (
            head
            + f"peak {row['peak_gb']:.2f} GB, step {row['step_s']:.2f} s, {row['tokens_per_s']:,.0f} tok/s, loss {row['loss']:.3f}"
        )
    error = " ".join(row.get("error") or []).removeprefix("out of memory: ")
    return head + ("out of memory" if row["status"] == "oom" else "error") + f": {error}"


def sweep(pairs: Iterable[tuple], execute: Callable[[int, str], dict], emit: Callable[[dict], None],
          say: Callable[[str], None] = print) -> list[dict]:  # fmt: skip
    """Runs each (length, impl) with ``execute(length, impl) -> row`` unless that implementation ran
    out of memory at a shorter length; ``emit`` gets each row as it finishes. Returns the rows."""
    rows, stopped = [], {}
    for length, impl in pairs:
        if impl in stopped:
            say(f"  L={length} {impl}: not run (out of memory at L={stopped[impl]})")
            continue
        row = execute(length, impl)
        rows.append(row)
        emit(row)
        say(progress_line(row))
        if row["status"] == "oom":
            stopped[impl] = length
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table; ``peak / mlx_lm best`` divides by the lowest mlx_lm peak at the same length."""
    from flashtune.bench.report import markdown_table

    peer_best = {}
    for r in rows:
        if r["impl"] in (TOOL, PEER_GC) and r["status"] == "ok":
            peer_best[r["length"]] = min(peer_best.get(r["length"], float("inf")), r["peak_gb"])
    body = [
        [r["length"], r["impl"], r["status"], r["peak_gb"] if r["status"] == "ok" else None,
         r["peak_gb"] / peer_best[r["length"]] if r["status"] == "ok" and r["length"] in peer_best else None,
         r["step_s"], r["tokens_per_s"], r["loss"]]
        for r in sorted(rows, key=lambda r: r["length"])
    ]  # fmt: skip
    return markdown_table(["L", "impl", "status", "peak GB", "peak / mlx_lm best", "step s", "tokens/s", "loss"], body)


def memory_cap_default() -> float | None:
    """On CPU runs, 0.8 of physical memory (MLX's own default memory limit there), in GB; else None."""
    from flashtune import env

    if env.backend() != "cpu" or not hasattr(os, "sysconf"):
        return None
    return 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `flashtune bench context`."""
    parser.add_argument("--model", default="SmolLM2-135M", help="model alias or local HF folder (default: %(default)s)")
    parser.add_argument("--lengths", help="comma list of sequence lengths in tokens; A,...,B doubles from A to B "
                        f"(default: doubling from {FIRST_LENGTH} to the model's context)")  # fmt: skip
    parser.add_argument("--impls", help="comma list of attention implementations, mlx_lm.lora and "
                        "mlx_lm.lora+grad-checkpoint (default: all)")  # fmt: skip
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help="training steps per run; the first compiles (default: %(default)s)",
    )
    parser.add_argument(
        "--results", help="results folder; output goes to <results>/context/ (default: results/<date>-<device>)"
    )
    parser.add_argument("--cache-dir", help="model folders, data, run scratch (default: ~/.cache/flashtune/bench)")
    parser.add_argument(
        "--export-dir", help="where mlx_lm's model folders with weights go (default: <cache-dir>/exports)"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="architecture-exact random weights even where real ones are available",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and random weights")
    parser.add_argument("--memory-cap-gb", type=float, help="stop a run whose resident memory passes this and record it as out "
                        "of memory, before the kernel's OOM killer picks a process (Linux; default on CPU: 0.8 of RAM; 0: no cap)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")


def _write_outputs(rows: list[dict], out: Path, stem: str, title: str) -> None:
    from flashtune.bench.plots import context as context_plot

    note = ("Each run: one sequence per step, a fresh process; flashtune with --chunked-loss --grad-checkpoint"
            ", LoRA rank 8 on every block. step s: median after the first step (which compiles); "
            "lengths after an out-of-memory run of an implementation are not run.")  # fmt: skip
    (out / f"{stem}.md").write_text(f"# {title}\n\n{note}\n\n{table(rows)}\n\n![{title}]({stem}.png)\n")
    if rows:
        context_plot(rows, out / f"{stem}.png", title)


def _prepare(args, facts: ModelFacts, lengths: list[int], out: Path):
    """The model folder, data and recipe; returns (Bench, model key, setup)."""
    import yaml

    from flashtune.bench.assets import prepare_data, prepare_model, slug
    from flashtune.bench.runner import Bench
    from flashtune.models import resolve_dtype

    cache = Path(args.cache_dir or os.environ.get("FLASHTUNE_BENCH_CACHE", "~/.cache/flashtune/bench")).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    dtype = str(resolve_dtype(None)).split(".")[-1]
    # The sweep convention is L inputs from L+1 tokens; here a sequence is L tokens (see `run_settings`).
    setup = prepare_model(args.model, cache, dtype, args.seed, max(lengths) - 1, args.random_init, args.export_dir)
    key = Path(args.model).name
    recipes = out / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    settings = dict(recipe(facts, args.steps), model=setup.train_model, init=setup.init)
    recipe_path("context", key, recipes).write_text(yaml.safe_dump(settings, sort_keys=False))
    cap = args.memory_cap_gb if args.memory_cap_gb is not None else memory_cap_default()
    bench = Bench(out.parent, cache, recipes, {key: setup}, {}, memory_cap_gb=cap or None, verbose=False)
    for length in lengths:
        bench.data[("context", key, length)] = prepare_data(setup, cache, args.seed, length - 1, 1)
    return bench, key, setup, slug(key)


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the plan the options give (see the module docstring); returns 0."""
    from flashtune import env
    from flashtune.bench.finetune import default_results_dir
    from flashtune.bench.report import summarize_run

    facts = model_facts(args.model)
    lengths, impls = parse_lengths(args.lengths, facts), parse_impls(args.impls)
    if args.steps < 1:
        raise ValueError(f"--steps {args.steps}: at least 1")
    pairs = plan(impls, lengths)
    out = (Path(args.results) if args.results else default_results_dir()) / "context"
    print(f"bench context: {facts.name} (context {facts.context} tokens, {facts.n_layers} blocks, vocabulary "
          f"{facts.vocab_size}), lengths {lengths}, {len(pairs)} runs of {args.steps} steps into {out}", flush=True)  # fmt: skip
    print(f"flashtune runs: --chunked-loss --grad-checkpoint, settings {recipe(facts, args.steps)}", flush=True)
    if args.dry_run:
        print("\n".join(f"  L={length} {impl}" for length, impl in pairs))
        return 0
    bench, key, setup, stem = _prepare(args, facts, lengths, out)
    path = out / f"{stem}.jsonl"
    settings = {"model": args.model, "lengths": lengths, "impls": impls, "steps": args.steps, "memory_cap_gb": bench.memory_cap_gb,
                "recipe": recipe(facts, args.steps), "memory_settings": MEMORY_SETTINGS}  # fmt: skip
    header = env.run_info(
        settings, kind="context-bench", model=setup.label, weights=setup.weights, context=facts.context
    )
    path.write_text(json.dumps(header) + "\n")

    def execute(length: int, impl: str) -> dict:
        run = Run("context", key, impl, length, 1, args.steps, overrides=run_settings(impl, length))
        bench.execute(run)
        return row_of(summarize_run(bench.results / run.relpath), length)

    def emit(row: dict) -> None:
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    rows = sweep(pairs, execute, emit)
    portable_file(path, run_roots(results=bench.results, cache=bench.cache, repo=PACKAGE_PARENT))
    _write_outputs(rows, out, stem, f"{setup.label.replace(args.model, key)}: one sequence per step")
    print(f"wrote {path}, {out / (stem + '.md')} and {out / (stem + '.png')}", flush=True)
    return 0
