"""The `flashtune` command: a thin table of subcommands, each a function in its own module."""

import argparse
import os
import sys
from pathlib import Path

from flashtune.bench import ATTENTION_REPEAT, ATTENTION_WARMUP


def _env(args) -> int:
    from flashtune import env

    print(env.report())
    return 0


def _attention(args) -> int:
    from flashtune import attention, env

    print(
        f"Attention implementations (flashtune train --attn NAME); paths on this machine ({env.device_name()}, {env.backend()}):\n"
    )
    for name in attention.names():
        info = attention.describe(name)
        print(f"{name}\n  what: {info['what']}\n  here: {info['here']}\n")
    return 0


def _bench_attention(args) -> int:
    import mlx.core as mx

    from flashtune.bench import attention as bench
    from flashtune.bench.attention_report import attention_table, demo_length_note
    from flashtune.bench.report import describe_header

    sets = ["memory"] if args.memory else args.sets.split(",")
    for name in sets:
        if name not in bench.SHAPE_SETS:
            raise SystemExit(f"unknown shape set {name!r}; valid: {', '.join(bench.SHAPE_SETS)}")
    impls = args.impl.split(",") if args.impl else None
    dtype = getattr(mx, args.dtype) if args.dtype else None
    out = Path(args.out) if args.out else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)

    def progress(r):
        status = f"{r['fwdbwd_ms']:.2f} ms fwd+bwd, {r['extra_mb']:.0f} MB" if r["status"] == "ok" else r["status"]
        print(f"  {r['tag']} B{r['batch']} L{r['length']} D{r['head_dim']} {r['impl']}: {status}", file=sys.stderr)

    records = bench.run(
        sets,
        impls,
        dtype,
        warmup=args.warmup,
        repeat=args.repeat,
        out=out,
        progress=progress,
        anchor=not args.no_anchor,
    )
    print(describe_header(records[0]))
    print(attention_table(records[1:]))
    note = demo_length_note(records[1:])
    if note:
        print(f"\n{note}")
    if args.memory:
        ok = {r["impl"]: r["extra_mb"] for r in records[1:] if r.get("status") == "ok"}
        if "baseline" in ok:
            for name, mb in ok.items():
                print(f"{name}: {mb:.0f} MB extra peak for fwd+bwd ({mb / ok['baseline']:.3f} of baseline)")
    if out:
        print(f"wrote {out}")
    return 0


def _train(args) -> int:
    import json

    from flashtune import config as config_module
    from flashtune.train import format_summary, train

    config = config_module.resolve(args)
    try:
        summary = train(config)
    except KeyboardInterrupt:
        return 130
    print(format_summary(summary))
    for sample in summary.get("samples", []):
        print(f"\nQ: {sample['prompt']}\n  before: {sample['before']}\n  after:  {sample['after']}")
    print(f"\nrun folder: {summary['run_dir']} (adapters: mlx_lm.generate --adapter-path {summary['run_dir']})")
    Path(summary["run_dir"], "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


def _generate(args) -> int:
    from flashtune import models
    from flashtune.generate import answer
    from flashtune.patch import patch

    model, tokenizer, info = models.load_model(args.model, init="pretrained", dtype=args.dtype)
    if args.adapter_path:
        from mlx_lm.tuner.utils import load_adapters

        load_adapters(model, args.adapter_path)
    patch(model, args.attn)
    print(answer(model, tokenizer, [{"role": "user", "content": args.prompt}], args.max_tokens))
    return 0


def _models(args) -> int:
    from flashtune import models

    print(models.format_models_table())
    return 0


def _bench_finetune(args) -> int:
    from flashtune.bench import finetune

    return finetune.run_from_args(args)


def _bench_context(args) -> int:
    from flashtune.bench import context

    return context.run_from_args(args)


def _bench_packed_attention(args) -> int:
    from flashtune.bench import packed_attention

    return packed_attention.run_from_args(args)


def _report(args) -> int:
    from flashtune.bench.report import write_report

    results = Path(args.results_dir)
    if not results.is_dir():
        raise SystemExit(f"{results} is not a folder of results (see make reproduce-finetune)")
    path = write_report(results)
    print(path.read_text())
    print(f"wrote {path} and its plots")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashtune", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print versions, device and BLAS")
    commands = parser.add_subparsers(dest="command")

    commands.add_parser("env", help="versions, device and CPU BLAS").set_defaults(run=_env)
    commands.add_parser("attention", help="the attention implementations and the path each takes here").set_defaults(
        run=_attention
    )

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    attn = bench.add_parser("attention", help="attention speed/memory, every implementation")
    attn.add_argument("--sets", default="seed,training", help="comma list of shape sets: seed, training, memory, smoke")
    attn.add_argument("--memory", action="store_true", help="peak memory of fwd+bwd at B1 H8/2 L4096 D64")
    attn.add_argument("--impl", help="comma list of implementations (default: all)")
    attn.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], help="default: bfloat16 on GPU, float32 on CPU"
    )
    attn.add_argument(
        "--warmup", type=int, default=ATTENTION_WARMUP, help="untimed compiled calls per pass (default %(default)s)"
    )
    attn.add_argument(
        "--repeat", type=int, default=ATTENTION_REPEAT, help="timed calls per pass, median kept (default %(default)s)"
    )
    attn.add_argument(
        "--no-anchor", action="store_true", help="skip bare mx.fast.scaled_dot_product_attention (impl 'anchor')"
    )
    attn.add_argument("--out", help="JSONL results file")
    attn.set_defaults(run=_bench_attention)

    from flashtune.bench.finetune import add_arguments as finetune_arguments  # light: model code loads lazily

    finetune = bench.add_parser(
        "finetune", help="100 LoRA iterations per implementation and mlx_lm.lora, and a length sweep"
    )
    finetune_arguments(finetune)
    finetune.set_defaults(run=_bench_finetune)

    from flashtune.bench.context import add_arguments as context_arguments

    long_context = bench.add_parser(
        "context", help="peak memory and speed of one sequence of growing length, every implementation and mlx_lm.lora"
    )
    context_arguments(long_context)
    long_context.set_defaults(run=_bench_context)

    from flashtune.bench.packed_attention import add_arguments as packed_arguments

    packed = bench.add_parser(
        "packed-attention", help="attention fwd+bwd on packed rows beside the same documents unpacked"
    )
    packed_arguments(packed)
    packed.set_defaults(run=_bench_packed_attention)

    report = commands.add_parser("report", help="Markdown tables and PNG plots from a results folder")
    report.add_argument("results_dir", help="folder of JSONL results (e.g. results/<date>-<device>)")
    report.set_defaults(run=_report)

    from flashtune import config as config_module  # stdlib + yaml only: cheap

    train = commands.add_parser("train", help="LoRA fine-tuning with a chosen attention implementation")
    config_module.add_arguments(train)
    train.set_defaults(run=_train)

    gen = commands.add_parser("generate", help="answer a prompt (optionally with trained adapters)")
    gen.add_argument("--model", default=config_module.TrainConfig.model)
    gen.add_argument("--adapter-path", help="run folder or adapter folder from flashtune train / mlx_lm lora")
    gen.add_argument("--attn", default=config_module.TrainConfig.attn)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--dtype")
    gen.set_defaults(run=_generate)

    commands.add_parser("models", help="model aliases, what is cached or embedded, sizes").set_defaults(run=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        return _env(args)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    import flashtune  # noqa: F401  (BLAS before mlx)
    from flashtune.errors import TrainingError

    try:
        return args.run(args)
    except (ValueError, KeyError, FileNotFoundError, TrainingError) as error:
        # Bad input and failed runs are reported as one message, not a traceback.
        if os.environ.get("FLASHTUNE_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"{type(error).__name__}: {message}", file=sys.stderr)
        print("(FLASHTUNE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1 if isinstance(error, TrainingError) else 2


if __name__ == "__main__":
    sys.exit(main())
