"""mlx_lm lora's output, captured from real runs on the tiny model, becomes flashtune records."""

from pathlib import Path

import pytest

from flashtune.bench.peer import TOOL, parse_output, to_records

DATA = Path(__file__).parent / "data"
# Captured with: python -m mlx_lm lora --model TINY --train --data DATA --iters 12 --batch-size 2
#   --num-layers 2 --steps-per-report 5 --steps-per-eval 10 --val-batches 2 -c lora.yaml
# (tests.tiny_models.write_tiny_hf_model / write_text_dataset); the peer file through
# python -m flashtune.bench.peer with the same arguments.
PLAIN = (DATA / "mlx_lm_lora_tiny_stdout.txt").read_text()
PEER = (DATA / "mlx_lm_lora_tiny_peer_stdout.txt").read_text()
OLD = """Trainable parameters: 0.417% (4.588M/1100.048M)
Starting training..., iters: 20
Iter 1: Val loss 10.533, Val took 7.710s
Iter 10: Train loss 10.537, Learning Rate 1.000e-05, It/sec 0.512, Tokens/sec 1734.2, Trained Tokens 29300, Peak mem 16.812 GB
Iter 20: Train loss 10.536, Learning Rate 1.000e-05, It/sec 3.901, Tokens/sec 11149.0, Trained Tokens 57000, Peak mem 16.900 GB
Iter 20: Val loss 10.532, Val took 0.110s
"""


def test_plain_table_output_of_mlx_lm_0_32():
    train, val, info = parse_output(PLAIN)
    assert info is None
    assert [r["iteration"] for r in train] == [5, 10, 12]
    assert [r["iteration"] for r in val] == [1, 10, 12]
    assert train[0] == {
        "iteration": 5,
        "train_loss": 5.130,
        "tokens_per_second": 1245.0,
        "trained_tokens": 100.0,
        "approx": True,
    }
    assert val[1]["val_loss"] == pytest.approx(4.919) and val[1]["val_time"] == pytest.approx(0.02)


def test_older_iter_lines():
    train, val, _ = parse_output(OLD)
    assert [r["iteration"] for r in train] == [10, 20] and [r["iteration"] for r in val] == [1, 20]
    assert train[0]["peak_memory"] == pytest.approx(16.812) and train[0]["iterations_per_second"] == pytest.approx(
        0.512
    )
    assert train[1]["trained_tokens"] == 57000 and train[1]["learning_rate"] == pytest.approx(1e-5)
    records = to_records(train, val, "m")
    assert records[1]["tokens"] == 57000 - 29300
    assert records[1]["wall_s"] == pytest.approx(27700 / 11149.0)


def test_peer_json_lines_win_and_give_exact_windows():
    train, val, info = parse_output(PEER)
    assert info["run_info"] and info["tool"] == TOOL and info["device"]["backend"]
    assert [r["iteration"] for r in train] == [5, 10, 12] and [v["iteration"] for v in val] == [1, 10, 12]
    records = to_records(train, val, "tiny")
    steps = [r for r in records if not r.get("eval")]
    assert [r["window"] for r in steps] == [[1, 5], [6, 10], [11, 12]]
    assert sum(r["tokens"] for r in steps) == train[-1]["trained_tokens"]
    for r, report in zip(steps, train):
        # mlx-lm's It/sec is steps_per_report / window time, even for the short last window
        assert r["wall_s"] == pytest.approx(report["steps_per_report"] / report["iterations_per_second"])
        assert r["wall_s"] == pytest.approx(r["tokens"] / r["tokens_per_s"], rel=1e-6)
        assert r["attn"] == TOOL and r["model"] == "tiny" and r["peak_mem_gb"] > 0 and "approx" not in r
    assert [r["warmup"] for r in steps] == [True, False, False]  # one shape, first seen in window 1
    assert steps[0]["shape"] == [2, 32] and steps[0]["padded_tokens"] == 5 * 2 * 32
    assert [r["iter"] for r in records if r.get("eval")] == [1, 10, 12]


def test_new_shapes_flag_their_window():
    train = [
        {"iteration": 1, "train_loss": 2.0, "tokens_per_second": 100.0, "trained_tokens": 100, "shapes": [[4, 64]]},
        {"iteration": 2, "train_loss": 1.9, "tokens_per_second": 200.0, "trained_tokens": 300, "shapes": [[4, 64]]},
        {"iteration": 3, "train_loss": 1.8, "tokens_per_second": 50.0, "trained_tokens": 400, "shapes": [[4, 96]]},
    ]
    records = to_records(train, [], "m")
    assert [r["warmup"] for r in records] == [True, False, True]
    assert [r["wall_s"] for r in records] == [1.0, 1.0, 2.0]
