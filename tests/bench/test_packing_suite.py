"""The packing suite: its plan, one pass's length and learning rate, the chat-like data, its goals, and a tiny run end to end."""

import json
import statistics

import pytest

from flashtune import data
from flashtune.bench import packing, timing_data
from flashtune.bench.finetune import TOOL, check_train_flags, plan
from flashtune.bench.goals import packing_goals
from flashtune.bench.runner import _flags
from flashtune.config import TrainConfig


def test_plan_runs_each_implementation_packed_and_padded_then_mlx_lm():
    runs = plan(
        ["M"], [], ["packing"], [], 1, -1, None, [], pack_datasets=["timing", "chat"], pack_impls=["poc", "demo", TOOL]
    )
    measured = [r for r in runs if r.suite == "packing"]
    assert [str(r.relpath) for r in measured[:5]] == [
        "packing/M/timing/poc-packed.jsonl", "packing/M/timing/poc-padded.jsonl", "packing/M/timing/demo-packed.jsonl",
        "packing/M/timing/demo-padded.jsonl", f"packing/M/timing/{TOOL}.jsonl",
    ]  # fmt: skip
    # Then the first implementation padded with seeds 1 and 2: the validation-loss yardstick.
    assert [(r.impl, r.variant) for r in measured[5:7]] == [("poc", "padded-seed1"), ("poc", "padded-seed2")]
    assert len(measured) == 14 and {r.dataset for r in measured} == {"timing", "chat"}
    assert not [r for r in runs if r.suite == "packing-cold" and "seed" in (r.variant or "")]
    # On a GPU each run follows a warm-up run of the same settings, under cold/.
    assert [(r.suite, str(r.relpath)) for r in runs[:2]] == [
        ("packing-cold", "packing/M/timing/cold/poc-packed.jsonl"),
        ("packing", "packing/M/timing/poc-packed.jsonl"),
    ]
    assert runs[0].is_warmup and runs[0].data_key == runs[1].data_key == ("packing", "M", "timing")
    cpu = plan(["M"], [], ["packing"], [], 1, 0, None, [], pack_datasets=["capitals"], pack_impls=["practical"])
    assert [r.variant for r in cpu] == ["packed", "padded", "padded-seed1", "padded-seed2"]
    alone = plan(
        ["M"], [], ["packing"], [], 1, 0, None, [], pack_datasets=["chat"], pack_impls=["demo"], pack_spread_runs=0
    )
    assert [r.variant for r in alone] == ["packed", "padded"]
    assert not plan(["M"], ["demo"], ["main"], [], 1, 0, None, [], pack_datasets=["chat"], pack_impls=["demo"])[
        0
    ].dataset
    with pytest.raises(ValueError, match="unknown packing dataset 'web'"):
        plan(["M"], [], ["packing"], [], 1, 0, None, [], pack_datasets=["web"], pack_impls=["demo"])
    with pytest.raises(ValueError, match="unknown packing implementation 'baseline'"):
        plan(["M"], [], ["packing"], [], 1, 0, None, [], pack_datasets=["chat"], pack_impls=["baseline"])


def examples(lengths):
    return data.Dataset(
        [data.Example(list(range(3, 3 + n)), 0, f"x:{i}") for i, n in enumerate(lengths)], None, "text", 0
    )


def test_pass_length_and_learning_rate_per_token():
    # 40 examples of 32 inputs (one per row of 32) and 40 of 16 (two per row): 60 packed rows, 15 steps of 4 rows.
    train = examples([33] * 40 + [17] * 40)
    config = TrainConfig(batch_size=4, learning_rate=3e-4)
    p = packing.pass_plan(config, train, granularity=32)
    assert (p.pack_length, p.padded_steps, p.packed_steps) == (32, data.num_batches(train, 4), 15) == (32, 20, 15)
    assert p.lr_scale == pytest.approx(20 / 15) and p.planned_packed_fill == pytest.approx(
        (40 * 32 + 40 * 16) / (60 * 32)
    )
    assert (
        packing.pass_plan(TrainConfig(batch_size=4, grad_accumulation=2), train, 32).packed_steps == 8
    )  # ceil(15 / 2)

    runs = plan(["M"], [], ["packing"], [], 1, -1, None, [], pack_datasets=["chat"], pack_impls=["demo", TOOL])
    cold, packed, _, padded, _, peer, reseeded, _ = (packing.apply_pass(r, p) for r in runs)
    assert (packed.iters, packed.overrides) == (
        15,
        {"warmup": 2, "pack": True, "pack_length": 32, "learning_rate": pytest.approx(4e-4)},
    )
    assert (padded.iters, padded.overrides) == (20, {"warmup": 2}) and (peer.iters, peer.overrides) == (
        20,
        {"warmup": 2},
    )
    assert cold.iters == 15 and cold.overrides == packed.overrides  # a warm-up runs the pass it warms up for
    assert (reseeded.variant, reseeded.iters, reseeded.overrides) == ("padded-seed1", 20, {"warmup": 2, "seed": 1})
    assert packed.extra["lr_scale"] == pytest.approx(4 / 3) and padded.extra["lr_scale"] == 1.0
    assert packed.extra["pass"]["padded_steps"] == 20 and packed.extra["peak_learning_rate"] == pytest.approx(4e-4)
    flags = _flags(packed.overrides)
    assert (
        flags[:4] == ["--warmup", "2", "--pack", "--pack-length"]
        and float(flags[-1]) == packed.overrides["learning_rate"]
    )
    assert check_train_flags(" ".join(flags)) == flags  # flashtune train takes them


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(timing_data.write_word_tokenizer(tmp_path_factory.mktemp("tok"), 4000))


def test_chat_lengths_are_long_tailed_and_deterministic(word_tokenizer, tmp_path):
    meta = timing_data.make_dataset(tmp_path / "a", word_tokenizer, kind="chat", n_train=1000, n_valid=0, seed=3)
    count = timing_data.token_counter(word_tokenizer)
    lengths = [count(json.loads(line)["text"]) for line in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert 185 <= statistics.median(lengths) <= 215, statistics.median(lengths)  # log-normal, median 200
    assert min(lengths) >= 16 and max(lengths) == 2048  # clipped to [16, 2048], the tail reaching the top
    over = sum(n > 1000 for n in lengths) / len(lengths)  # P(log-normal > 5 x median) = 5.4% at sigma 1
    assert 0.03 <= over <= 0.08, over
    assert meta["train"]["median_tokens"] == statistics.median(lengths) and meta["train"]["max_tokens"] == 2048
    assert (meta["median"], meta["sigma"], meta["lo"], meta["hi"]) == (200, 1.0, 16, 2048) and "log-normal" in meta[
        "distribution"
    ]
    assert json.loads((tmp_path / "a" / "meta.json").read_text()) == meta
    again = timing_data.make_dataset(tmp_path / "b", word_tokenizer, kind="chat", n_train=1000, n_valid=0, seed=3)
    other = timing_data.make_dataset(tmp_path / "c", word_tokenizer, kind="chat", n_train=1000, n_valid=0, seed=4)
    assert again["train"]["sha256"] == meta["train"]["sha256"] != other["train"]["sha256"]
    with pytest.raises(ValueError, match="lo <= hi"):
        timing_data.make_dataset(tmp_path / "d", word_tokenizer, kind="chat", lo=300, hi=100)


def summary(impl, variant, kind, trained, val):
    bench = {"dataset": "d", "variant": variant, "data_meta": {"kind": kind}}
    return {
        "model": "M",
        "fine_tune_type": "lora",
        "impl": impl,
        "status": "ok",
        "bench": bench,
        "tokens_per_s": trained,
        "final_val_loss": val,
    }


def test_packing_goals():
    runs = [
        summary("practical", "packed", "chat", 300.0, 2.025), summary("practical", "padded", "chat", 100.0, 2.00),
        summary("demo", "packed", "chat", 200.0, 2.00), summary("demo", "padded", "chat", 100.0, 2.02),
        summary(TOOL, None, "chat", 50.0, 1.9),
    ]  # fmt: skip
    rows = {row[2]: row[3:] for row in packing_goals(runs)}
    assert not [cell for row in rows.values() for cell in row if "|" in cell]  # a pipe would split a Markdown cell
    assert rows["trained tok/s, practical packed vs padded"] == ["3.00×", "≥ 2.5×", "yes"]
    assert rows["trained tok/s, demo packed vs padded"] == ["2.00×", "≥ 2.5×", "no"]
    assert rows[f"trained tok/s, best packed (practical) vs {TOOL}"] == ["6.00×", "≥ 5×", "yes"]
    val = rows["val loss after the pass, packed (farthest) vs padded mean"]
    assert val == ["2.0250 vs 2.0100 (Δ +0.0150)", "Δ within ±0.0200 (padded spread)", "yes"]
    reseeded = [*runs, summary("practical", "padded-seed1", "chat", 100.0, 1.96)]  # widens the spread, moves the mean
    val = {row[2]: row[3:] for row in packing_goals(reseeded)}[
        "val loss after the pass, packed (farthest) vs padded mean"
    ]
    assert val == ["2.0250 vs 1.9933 (Δ +0.0317)", "Δ within ±0.0600 (padded spread)", "yes"]
    timing = {
        row[2]: row[3:]
        for row in packing_goals(
            [summary("demo", "packed", "variable", 140.0, 2.0), summary("demo", "padded", "variable", 100.0, 2.0)]
        )
    }
    assert timing == {
        "trained tok/s, demo packed vs padded": ["1.40×", "≥ 1.5×", "no"]
    }  # one padded run: no spread, no loss row


RECIPE = (
    "model: tiny\nbatch_size: 2\nlora_layers: 2\nsteps_per_eval: 0\nval_batches: -1\nsteps_per_save: 0\nsample: false\n"
)


def test_tiny_packing_suite_end_to_end(tmp_path):
    from mlx_lm.utils import load_tokenizer

    from flashtune import env
    from flashtune.bench.report import collect, write_report

    from .fixtures import tiny_bench

    bench = tiny_bench(tmp_path, RECIPE)
    (bench.recipes / "packing-tiny.yaml").write_text(RECIPE)
    setup = bench.setups["tiny"]
    tokenizer = load_tokenizer(
        timing_data.write_word_tokenizer(setup.tokenizer_dir, 128)
    )  # ids spread over the vocabulary
    folder = tmp_path / "chat"
    timing_data.make_dataset(folder, tokenizer, kind="chat", median=12, lo=4, hi=60, n_train=24, n_valid=4)
    bench.data[("packing", "tiny", "chat")] = folder
    p = packing.measure_pass(bench.recipes, folder, setup, env.backend())
    assert p.packed_steps < p.padded_steps == 12
    for run in packing.plan_runs(["tiny"], ["chat"], ["practical", TOOL], 0, spread_runs=1):
        assert bench.execute(packing.apply_pass(run, p)) == "ok", run.name
    runs = {(s["impl"], s["bench"]["variant"]): s for s in collect(bench.results)}
    packed, padded, peer = runs[("practical", "packed")], runs[("practical", "padded")], runs[(TOOL, None)]
    assert (packed["iters"], padded["iters"], peer["iters"]) == (p.packed_steps, 12, 12)
    assert packed["run_info"]["config"]["pack"] and packed["run_info"]["config"]["learning_rate"] == pytest.approx(
        2e-4 * p.lr_scale
    )
    assert packed["bench"]["lr_scale"] == pytest.approx(p.lr_scale) and packed["input_tokens"] == p.input_tokens
    assert packed["final_val_loss"] is not None and padded["final_val_loss"] is not None
    reseeded = runs[("practical", "padded-seed1")]
    assert reseeded["run_info"]["config"]["seed"] == 1 and padded["run_info"]["config"]["seed"] == 0
    assert reseeded["iters"] == 12 and reseeded["final_val_loss"] != padded["final_val_loss"]
    md = write_report(bench.results).read_text()
    for row in (
        "| practical packed | ok |",
        "| practical padded | ok |",
        "| practical padded-seed1 | ok |",
        "| tiny | chat | val loss after the pass, packed (farthest) vs padded mean |",
        f"| {TOOL} | ok |",
        "| tiny | chat | trained tok/s, practical packed vs padded |",
    ):
        assert row in md, row
    assert (
        "![trained tokens/s](packing-tiny-chat.png)" in md
        and (bench.results / "packing-tiny-chat.png").stat().st_size > 10_000
    )
