"""mlx-lm's own LoRA trainer (``python -m mlx_lm lora``), run and recorded as flashtune runs are.

``python -m flashtune.bench.peer ARGS`` runs ``mlx_lm lora ARGS`` unchanged (its code path,
batching, padding and compiled step), adding only observation:

- flashtune's OpenBLAS preload (``import flashtune``), so on a CPU both tools use the same BLAS
  and the comparison is about the trainers, not the BLAS;
- a reporting callback next to mlx-lm's own, printing each report as a JSON line
  (``flashtune-peer: {...}``: loss, learning rate, tokens/s, trained tokens, peak memory,
  seconds since start) and, before training, a run_info line (``flashtune-peer-info: {...}``);
- a pass-through around the batch iterator that notes each training batch's shape, so that
  iterations which compiled a new shape are flagged ``warmup`` exactly as flashtune flags its own.

`parse_output` reads those JSON lines, and also mlx-lm's plain reports, in both the current
table form (``  10    2.345 ▼    1,234    12.3k``, ``   1    val 2.345    0.12s``) and the older
``Iter 10: Train loss 2.345, Learning Rate 1e-05, It/sec 0.5, Tokens/sec 400, Trained Tokens
8000, Peak mem 1.23 GB`` form. `to_records` turns reports into flashtune's per-iteration
record format (one record per report window; ``window`` gives its first and last iteration).
"""

import json
import re
import sys
import time
from typing import Any

PREFIX = "flashtune-peer: "
INFO_PREFIX = "flashtune-peer-info: "
TOOL = "mlx_lm.lora"
PEER_GC = TOOL + "+grad-checkpoint"  # the same trainer with its --grad-checkpoint


def is_peer(impl: str) -> bool:
    """Whether ``impl`` names a run of mlx_lm lora (with or without its grad checkpointing)."""
    return impl in (TOOL, PEER_GC)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NUM = r"([-+]?[0-9][0-9,]*\.?[0-9]*(?:[eE][-+]?[0-9]+)?|nan|inf)"
_TABLE_TRAIN = re.compile(rf"^\s*(\d+)\s+{_NUM}\s*[▼▲]?\s+{_NUM}\s+{_NUM}k\s*$")
_TABLE_VAL = re.compile(rf"^\s*(\d+)\s+val\s+{_NUM}\s+{_NUM}s\s*$")
_OLD_TRAIN = re.compile(r"^Iter (\d+): Train loss ([^,]+),(.*)$")
_OLD_VAL = re.compile(r"^Iter (\d+): Val loss ([^,]+), Val took ([0-9.]+)s")
_OLD_FIELDS = {
    "Learning Rate": "learning_rate", "It/sec": "iterations_per_second",
    "Tokens/sec": "tokens_per_second", "Trained Tokens": "trained_tokens", "Peak mem": "peak_memory",
}  # fmt: skip


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("GB", "").strip())


def parse_output(text: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """Reads mlx_lm lora's stdout.

    Args:
        text: the captured output (ANSI colour codes are stripped).

    Returns:
        (train reports, validation reports, run_info or None). A train report has
        ``iteration, train_loss, tokens_per_second, trained_tokens`` and, where the output gives
        them, ``learning_rate, iterations_per_second, peak_memory, time_s, shapes, approx``
        (``approx``: tokens read from the table's rounded ``12.3k`` column). A validation report
        has ``iteration, val_loss, val_time``. When the JSON lines are present only they are used.
    """
    lines = [_ANSI.sub("", line).rstrip("\r") for line in text.splitlines()]
    info = None
    json_train, json_val = [], []
    for line in lines:
        if line.startswith(INFO_PREFIX):
            info = json.loads(line[len(INFO_PREFIX) :])
        elif line.startswith(PREFIX):
            report = json.loads(line[len(PREFIX) :])
            (json_val if report.pop("kind", "train") == "val" else json_train).append(report)
    if json_train or json_val:
        return json_train, json_val, info
    train, val = [], []
    for line in lines:
        if m := _TABLE_VAL.match(line):
            val.append({"iteration": int(m[1]), "val_loss": _number(m[2]), "val_time": _number(m[3])})
        elif m := _TABLE_TRAIN.match(line):
            train.append({
                "iteration": int(m[1]), "train_loss": _number(m[2]), "tokens_per_second": _number(m[3]),
                "trained_tokens": _number(m[4]) * 1000, "approx": True,
            })  # fmt: skip
        elif m := _OLD_VAL.match(line):
            val.append({"iteration": int(m[1]), "val_loss": _number(m[2]), "val_time": _number(m[3])})
        elif m := _OLD_TRAIN.match(line):
            report = {"iteration": int(m[1]), "train_loss": _number(m[2])}
            for part in m[3].split(","):
                name, _, value = part.strip().removesuffix(" GB").rpartition(" ")
                if name in _OLD_FIELDS:
                    report[_OLD_FIELDS[name]] = _number(value)
            train.append(report)
    return train, val, info


def to_records(train: list[dict[str, Any]], val: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """flashtune per-iteration records from mlx_lm reports, one per report window.

    A window's ``wall_s`` is mlx-lm's own training time for it (tokens / tokens-per-second: its
    timer covers the step and ``mx.eval``, not validation), ``tokens`` the tokens it trained on.
    ``warmup`` is True when a window compiled a new batch shape (known only from the JSON lines).
    """
    records: list[dict[str, Any]] = []
    previous_iter, previous_tokens = 0, 0.0
    seen = set()
    for r in sorted(train, key=lambda r: r["iteration"]):
        tokens = r["trained_tokens"] - previous_tokens
        tps = r["tokens_per_second"]
        if r.get("iterations_per_second") and r.get("steps_per_report") and not r.get("approx"):
            wall = r["steps_per_report"] / r["iterations_per_second"]
        else:
            wall = tokens / tps if tps else float("nan")
        shapes = [tuple(s) for s in r.get("shapes", [])]
        record = {
            "iter": r["iteration"], "window": [previous_iter + 1, r["iteration"]],
            "wall_s": wall, "tokens": int(round(tokens)), "tokens_per_s": tps, "loss": r["train_loss"],
            "lr": r.get("learning_rate"), "peak_mem_gb": r.get("peak_memory"), "attn": TOOL, "model": model,
            "source": TOOL,
        }  # fmt: skip
        if shapes:
            record["shape"] = list(shapes[-1])
            record["padded_tokens"] = sum(rows * length for rows, length in shapes)
            record["warmup"] = any(s not in seen for s in shapes)
            seen.update(shapes)
        if r.get("approx"):
            record["approx"] = True
        if "time_s" in r:
            record["time_s"] = r["time_s"]
        records.append(record)
        previous_iter, previous_tokens = r["iteration"], r["trained_tokens"]
    for v in val:
        records.append(
            {"eval": True, "iter": v["iteration"], "val_loss": v["val_loss"], "eval_s": v["val_time"], "source": TOOL}
        )
    return records


# --- the runner: python -m flashtune.bench.peer ARGS (= python -m mlx_lm lora ARGS) ---------------


class _ShapeLog:
    """Wraps mlx-lm's batch iterator; remembers the (B, L) of training batches not yet reported."""

    def __init__(self, iterate_batches):
        self.iterate_batches = iterate_batches
        self.pending: list[list[int]] = []

    def __call__(self, *args, **kwargs):
        training = kwargs.get("loop", False)
        for batch in self.iterate_batches(*args, **kwargs):
            if training:
                tokens = batch[0]
                self.pending.append([int(tokens.shape[0]), int(tokens.shape[1]) - 1])  # inputs are one shorter
            yield batch

    def take(self) -> list[list[int]]:
        out, self.pending = self.pending, []
        return out


def _json_callback(wrapped, shapes: _ShapeLog, start: float, steps_per_report: int):
    from mlx_lm.tuner.callbacks import TrainingCallback

    def plain(info: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in info.items()}

    class JsonReport(TrainingCallback):
        def on_train_loss_report(self, info):
            report = plain(info)
            report.update(time_s=time.perf_counter() - start, shapes=shapes.take(), steps_per_report=steps_per_report)
            print(PREFIX + json.dumps(report), flush=True)
            if wrapped is not None:
                wrapped.on_train_loss_report(info)

        def on_val_loss_report(self, info):
            report = plain(info)
            report.update(kind="val", iteration=report["iteration"] + 1, time_s=time.perf_counter() - start)
            print(PREFIX + json.dumps(report), flush=True)
            if wrapped is not None:
                wrapped.on_val_loss_report(info)

    return JsonReport()


def main(argv: list[str] | None = None) -> None:
    """Runs ``mlx_lm lora`` with ``argv`` (default: this process's arguments), observed as above."""
    start = time.perf_counter()
    from functools import partial

    import mlx_lm.lora as lora
    from mlx_lm.tuner.trainer import iterate_batches

    import flashtune  # noqa: F401  (OpenBLAS before mlx, as for flashtune's own runs)
    from flashtune import env

    argv = sys.argv[1:] if argv is None else list(argv)
    args = lora.build_parser().parse_args(argv)
    steps_per_report = args.steps_per_report
    if steps_per_report is None and args.config:
        import yaml

        steps_per_report = (yaml.safe_load(open(args.config)) or {}).get("steps_per_report")
    steps_per_report = steps_per_report or lora.CONFIG_DEFAULTS["steps_per_report"]

    shapes = _ShapeLog(iterate_batches)
    original_callbacks = lora.get_reporting_callbacks
    lora.get_reporting_callbacks = lambda *a, **k: _json_callback(
        original_callbacks(*a, **k), shapes, start, steps_per_report
    )
    lora.train = partial(lora.train, iterate_batches=shapes)
    print(INFO_PREFIX + json.dumps(env.run_info({"argv": argv}, tool=TOOL)), flush=True)
    sys.argv = ["mlx_lm.lora"] + argv
    lora.main()


if __name__ == "__main__":
    main()
