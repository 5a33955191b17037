"""Per-iteration bookkeeping: wall time with iterations in flight, records, NaN stop."""

import math

import mlx.core as mx
import pytest

from flashtune.errors import TrainingError
from flashtune.train import iterations


def make_log(records, compiled=True):
    def nan_stop(it, loss):
        raise TrainingError(f"loss {loss} at {it}")

    return iterations.IterationLog(
        write=records.append,
        show=lambda record: None,
        nan_stop=nan_stop,
        fields={"attn": "demo", "model": "m", "world_size": 1},
        compiled=compiled,
    )


def dispatched(it, tic, length, loss=1.0):
    return iterations.Iteration(it, tic, [(2, length)], loss=mx.array(loss), tokens=mx.array(10.0), lr=mx.array(1e-3))


def test_wall_time_counts_overlap_once_and_pauses_between(monkeypatch):
    clock = iter([3.0, 5.0, 12.0])
    monkeypatch.setattr(iterations.time, "perf_counter", lambda: next(clock))
    records = []
    log = make_log(records)
    first, second = dispatched(1, 0.0, 64), dispatched(2, 1.0, 64)  # 2 dispatched before 1 ended
    log.complete(first)
    log.complete(second)
    log.pause()  # evaluation here
    log.complete(dispatched(3, 10.0, 128))
    assert [r["wall_s"] for r in records] == [3.0, 2.0, 2.0]  # sums to the busy time, 7 of 12 s
    assert [r["warmup"] for r in records] == [True, False, True]  # first step of each shape
    assert records[0]["tokens_per_s"] == pytest.approx(10 / 3) and records[0]["padded_tokens"] == 128
    assert log.completed == 3


def test_uncompiled_steps_are_never_warmup_and_nan_stops():
    records = []
    log = make_log(records, compiled=False)
    log.complete(dispatched(1, 0.0, 64))
    assert records[0]["warmup"] is False
    with pytest.raises(TrainingError, match="loss nan at 2"):
        log.complete(dispatched(2, 0.0, 64, loss=math.nan))
    assert log.completed == 1 and len(records) == 1
