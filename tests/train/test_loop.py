"""The trainer on a tiny local model: learning, exact resume, mlx-lm compatibility (LoRA, DoRA, full), clear errors."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

import flashtune  # noqa: F401
from flashtune import config as config_module
from flashtune import data, models
from flashtune.train import checkpoint, loop, prepare, records, step
from tests.tiny_models import train_config as make_config


def adapters(run_dir):
    return mx.load(str(Path(run_dir) / "adapters.safetensors"))


def step_losses(run_dir):
    return [r["loss"] for r in records.read(Path(run_dir) / "records.jsonl") if "wall_s" in r]


def train_keeping_model(config, monkeypatch):
    """Trains as `loop.train` does and returns the trained model itself."""
    kept = []
    monkeypatch.setattr(loop, "prepare", lambda c: kept.append(prepare.prepare(c)) or kept[0])
    loop.train(config)
    monkeypatch.undo()
    return kept[0].model


def test_loss_goes_down_and_records_follow_the_contract(tiny, tmp_path):
    summary = loop.train(make_config(tiny, tmp_path / "run"))
    rows = records.read(tmp_path / "run" / "records.jsonl")
    header, steps = rows[0], [r for r in rows if "iter" in r and not r.get("eval")]
    assert header["run_info"] and header["config"]["attn"] == "practical"
    assert {"flashtune", "mlx", "mlx_lm", "git_sha", "device", "seed", "dtype"} <= set(header)
    for key in ("iter", "wall_s", "tokens", "tokens_per_s", "loss", "lr", "peak_mem_gb", "attn", "model", "warmup"):
        assert key in steps[0], key
    assert [r["iter"] for r in steps] == list(range(1, 31))
    assert steps[0]["warmup"] is True  # the first step compiles: flagged, not dropped
    assert summary["final_loss"] < 0.7 * summary["first_loss"]
    assert summary["final_val_loss"] < 0.6 * summary["first_val_loss"]
    assert max(r["lr"] for r in steps) == pytest.approx(1e-3, rel=0.05)  # warm-up reaches the peak


@pytest.mark.parametrize("fine_tune_type", config_module.FINE_TUNE_TYPES)
def test_resume_after_interrupt_matches_an_uninterrupted_run(tiny, tmp_path, monkeypatch, fine_tune_type):
    settings = dict(iters=12, steps_per_save=100, fine_tune_type=fine_tune_type)
    loop.train(make_config(tiny, tmp_path / "straight", **settings))

    original = data.iterate_batches

    def interrupted(*args, **kwargs):  # Ctrl-C while fetching the 8th batch
        for i, batch in enumerate(original(*args, **kwargs)):
            if i == 7:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(loop.data, "iterate_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.train(make_config(tiny, tmp_path / "resumed", **settings))
    monkeypatch.setattr(loop.data, "iterate_batches", original)
    step, _ = checkpoint.latest(tmp_path / "resumed")
    assert step == 7  # the interrupt saved the last completed iteration
    loop.train(make_config(tiny, tmp_path / "resumed", resume=True, **settings))

    expected, got = adapters(tmp_path / "straight"), adapters(tmp_path / "resumed")
    assert set(expected) == set(got)
    for name in expected:  # bit-identical: same compiled steps, same data, same optimizer state
        np.testing.assert_array_equal(np.array(got[name]), np.array(expected[name]), err_msg=name)
    assert step_losses(tmp_path / "resumed") == step_losses(tmp_path / "straight")
    summary = records.summarize(records.read(tmp_path / "resumed" / "records.jsonl"))
    assert summary["iters"] == 12


@pytest.mark.parametrize("grad_accumulation", [1, 2])
def test_pipelined_steps_train_and_record_exactly_as_waiting_ones(tiny, tmp_path, grad_accumulation, monkeypatch):
    """--pipeline dispatches step i+1 before waiting for step i: the same updates, and each record
    still holds its own iteration's loss, learning rate and tokens."""
    # Pipelining is for GPUs; the trainer is told it runs on one, so the pipelined path runs here.
    monkeypatch.setattr(loop.env, "backend", lambda: "cuda")
    assert loop.pipelines(make_config(tiny, "unused"), loop.env.backend())
    runs = {}
    for pipeline in (True, False):
        out = tmp_path / f"pipeline-{pipeline}"
        loop.train(
            make_config(
                tiny,
                out,
                iters=14,
                warmup=5,
                steps_per_eval=6,
                steps_per_save=4,
                pipeline=pipeline,
                grad_accumulation=grad_accumulation,
            )
        )
        steps = [r for r in records.read(out / "records.jsonl") if "wall_s" in r]
        runs[pipeline] = (adapters(out), steps)
    (params, steps), (params_sync, steps_sync) = runs[True], runs[False]
    for name in params_sync:
        np.testing.assert_array_equal(np.array(params[name]), np.array(params_sync[name]), err_msg=name)
    for key in ("iter", "loss", "lr", "tokens", "shape"):
        assert [r[key] for r in steps] == [r[key] for r in steps_sync], key
    assert len({r["lr"] for r in steps}) > 5  # warm-up and decay: a shifted record would show
    assert all(r["wall_s"] > 0 for r in steps)


def test_fused_projections_train_like_separate_ones(tiny, tmp_path):
    """--fuse-projections (the default) is a speed choice: same updates, same adapter names."""
    runs = {}
    for fuse in (True, False):
        out = tmp_path / f"fuse-{fuse}"
        loop.train(make_config(tiny, out, iters=8, steps_per_save=100, fuse_projections=fuse))
        runs[fuse] = adapters(out), records.read(out / "records.jsonl")
    (fused, fused_rows), (separate, separate_rows) = runs[True], runs[False]
    assert fused_rows[0]["fused_projection_groups"] == 4 and separate_rows[0]["fused_projection_groups"] == 0
    assert set(fused) == set(separate)
    for name in separate:
        expected = np.array(separate[name])
        np.testing.assert_allclose(
            np.array(fused[name]), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max(), err_msg=name
        )


def test_each_batch_shape_is_traced_once(tiny, tmp_path, monkeypatch):
    """The compiled step traces (runs its Python) once per batch shape: the optimizer's state
    exists before step 1, so step 2 does not see new inputs and compile again."""
    traced, validating = [], [False]
    original_loss, original_evaluate = step.loss_sum, loop.evaluate

    def counting_loss(model, inputs, *rest):
        if not validating[0]:
            traced.append(tuple(inputs.shape))
        return original_loss(model, inputs, *rest)

    def flagged_evaluate(*args, **kwargs):
        validating[0] = True
        try:
            return original_evaluate(*args, **kwargs)
        finally:
            validating[0] = False

    monkeypatch.setattr(step, "loss_sum", counting_loss)
    monkeypatch.setattr(loop, "evaluate", flagged_evaluate)
    out = tmp_path / "run"
    loop.train(make_config(tiny, out, iters=6, steps_per_save=100))
    shapes = [tuple(r["shape"]) for r in records.read(out / "records.jsonl") if "wall_s" in r]
    assert len(shapes) == 6
    assert sorted(traced) == sorted(set(shapes))


def test_pipelining_is_for_gpus_only(tiny):
    config = make_config(tiny, "unused")
    assert loop.pipelines(config, "cuda") and loop.pipelines(config, "metal")
    assert not loop.pipelines(config, "cpu")
    assert not loop.pipelines(dataclasses.replace(config, pipeline=False), "cuda")


def test_gradient_accumulation_is_one_update_over_all_micro_batches(tiny, tmp_path):
    """One iteration with --grad-accumulation 2 equals AdamW applied by hand to the token-weighted
    mean gradient of the first two batches, from the same seeded model and LoRA init."""
    import mlx.nn as nn
    import mlx.optimizers as optim

    from flashtune.train.lora import adapter_config, apply_lora

    config = make_config(tiny, tmp_path / "run", iters=1, warmup=0, grad_accumulation=2, steps_per_eval=0)
    loop.train(config)

    mx.random.seed(config.seed)
    model, tokenizer, _ = models.load_model(config.model, seed=config.seed)
    apply_lora(model, adapter_config(config.lora_layers, config.lora_rank, config.lora_scale, config.lora_dropout))
    dataset = data.load_dataset(config.data, tokenizer).train
    micro_batches = list(data.iterate_batches(dataset, config.batch_size, seed=config.seed, num_steps=2))
    value_and_grad = nn.value_and_grad(model, step.loss_sum)
    grads, tokens = None, 0.0
    for batch in micro_batches:
        (_, count), g = value_and_grad(model, *batch.arrays)
        grads = g if grads is None else tree_map(mx.add, grads, g)
        tokens += count.item()
    optimizer = optim.AdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    optimizer.update(model, tree_map(lambda g: g / tokens, grads))

    expected = dict(tree_flatten(model.trainable_parameters()))
    got = adapters(tmp_path / "run")
    assert set(got) == set(expected)
    for name in got:
        # Adam's first step is ~lr * sign(g): where g is near zero, float32 summation order moves
        # an element by ~1e-7 (of updates ~3e-3). A wrong accumulation is off by the update itself.
        np.testing.assert_allclose(np.array(got[name]), np.array(expected[name]), rtol=1e-4, atol=1e-6, err_msg=name)
    record = [r for r in records.read(tmp_path / "run" / "records.jsonl") if "wall_s" in r][0]
    assert record["tokens"] == int(tokens)


@pytest.mark.parametrize("fine_tune_type", config_module.FINE_TUNE_TYPES)
def test_adapters_load_into_plain_mlx_lm(tiny, tmp_path, monkeypatch, fine_tune_type):
    """mlx_lm.load(model, adapter_path=run) and mlx_lm fuse give the trained model's logits; only
    the last --lora-layers blocks changed."""
    from mlx_lm.utils import load

    run = tmp_path / "run"
    trained = train_keeping_model(
        make_config(tiny, run, iters=5, attn="demo", lora_layers=1, fine_tune_type=fine_tune_type), monkeypatch
    )
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == fine_tune_type and config["num_layers"] == 1
    saved = set(adapters(run))
    assert all(name.startswith("model.layers.1.") for name in saved)
    if fine_tune_type == "full":
        assert {
            f"model.layers.1.{name}.weight" for name in ("self_attn.q_proj", "mlp.down_proj", "input_layernorm")
        } <= saved
    else:
        assert {name.rsplit(".", 1)[1] for name in saved} == (
            {"lora_a", "lora_b", "m"} if fine_tune_type == "dora" else {"lora_a", "lora_b"}
        )
    plain, _ = load(str(tiny[0]))
    with_adapters, _ = load(str(tiny[0]), adapter_path=str(run))
    tokens = mx.array([[5, 9, 11, 17, 23, 4]])
    assert not np.allclose(np.array(plain(tokens)), np.array(with_adapters(tokens)), atol=1e-4)
    trained.eval()
    np.testing.assert_allclose(np.array(with_adapters(tokens)), np.array(trained(tokens)), rtol=1e-5, atol=1e-5)
    # mlx_lm.fuse folds them into the weights: a plain model with the same logits.
    fused_dir = tmp_path / "fused"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "fuse",
            "--model",
            str(tiny[0]),
            "--adapter-path",
            str(run),
            "--save-path",
            str(fused_dir),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    fused, _ = load(str(fused_dir))
    np.testing.assert_allclose(np.array(fused(tokens)), np.array(with_adapters(tokens)), rtol=1e-4, atol=1e-4)


def mlx_lm_batch(batch: data.Batch):
    """flashtune's (inputs, targets, mask) as mlx-lm's trainer takes it: (tokens, (offset, length))
    rows whose loss mask, ``offset <= t + 1 <= length``, is flashtune's. Each row's tokens are its
    first input then its targets (a shorter row's last input is padding, its last target is not)."""
    mask = np.array(batch.mask) > 0
    positions = np.arange(mask.shape[1])
    spans = [(int(positions[row].min()) + 1, int(positions[row].max()) + 1) for row in mask]
    tokens = mx.concatenate([batch.inputs[:, :1], batch.targets], axis=1)
    return tokens, mx.array(spans)


def test_full_fine_tune_matches_mlx_lm(tiny, tmp_path, monkeypatch):
    """mlx-lm's full fine-tune (mlx_lm.lora.train_model: its freezing, loss and compiled step) fed
    flashtune's batches in flashtune's order, same AdamW and learning rate: the same losses, and
    the same weights under the same names in adapters.safetensors."""
    import types
    from functools import partial

    import mlx_lm.lora as mlx_lm_lora
    from mlx_lm.tuner import trainer
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.utils import load

    iters = 4
    config = make_config(
        tiny,
        tmp_path / "ours",
        iters=iters,
        fine_tune_type="full",
        lora_layers=1,
        warmup=0,
        min_lr_ratio=1.0,
        steps_per_eval=0,
    )
    loop.train(config)

    model, tokenizer = load(str(tiny[0]))
    dataset = data.load_dataset(config.data, models.load_model(config.model)[1]).train
    batches = [
        mlx_lm_batch(b) for b in data.iterate_batches(dataset, config.batch_size, seed=config.seed, num_steps=iters)
    ]
    losses = []

    class Losses(TrainingCallback):
        def on_train_loss_report(self, info):
            losses.append(info["train_loss"])

    args = types.SimpleNamespace(**{
        **mlx_lm_lora.CONFIG_DEFAULTS, "fine_tune_type": "full", "num_layers": 1, "iters": iters, "batch_size": config.batch_size,
        "learning_rate": config.learning_rate, "optimizer": "adamw", "optimizer_config": {"adamw": {"weight_decay": config.weight_decay}},
        "steps_per_report": 1, "save_every": 1000, "adapter_path": str(tmp_path / "theirs"),
    })  # fmt: skip
    monkeypatch.setattr(mlx_lm_lora, "train", partial(trainer.train, iterate_batches=lambda **_: iter(batches)))
    mlx_lm_lora.train_model(args, model, [], [], Losses())

    np.testing.assert_allclose(step_losses(tmp_path / "ours"), losses, rtol=1e-5)
    ours, theirs = adapters(tmp_path / "ours"), adapters(tmp_path / "theirs")
    assert set(ours) == set(theirs)
    for name in theirs:
        # Adam's first steps are ~lr * sign(g): where g is near zero, float32 summation order moves
        # an element by ~3e-5 of the ~1e-2 these 4 steps move it; a wrong update is off by ~lr (1e-3).
        np.testing.assert_allclose(np.array(ours[name]), np.array(theirs[name]), rtol=1e-4, atol=5e-5, err_msg=name)


def test_full_fine_tuning_refuses_quantized_blocks(tiny):
    import mlx.nn as nn

    from flashtune.train.lora import train_last_blocks

    model, _, _ = models.load_model(tiny[0])
    nn.quantize(model, group_size=32, bits=4)
    with pytest.raises(ValueError, match="quantized layers.*--fine-tune-type lora or dora"):
        train_last_blocks(model, 1)


def test_existing_run_is_not_overwritten(tiny, tmp_path):
    loop.train(make_config(tiny, tmp_path / "run", iters=2))
    with pytest.raises(loop.TrainingError, match="--resume"):
        loop.train(make_config(tiny, tmp_path / "run", iters=2))


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"attn": "flash9"}, KeyError, "baseline"),
        ({"model": "NoSuchModel-7B"}, ValueError, "TinyLlama-1.1B"),
        ({"data": "/nonexistent/data"}, FileNotFoundError, "/nonexistent/data"),
        ({"qlora": True, "fine_tune_type": "full"}, config_module.ConfigError, "--qlora.*lora or dora"),
    ],
)
def test_bad_input_fails_before_loading_the_model(tiny, tmp_path, monkeypatch, overrides, error, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(prepare.models, "load_model", no_loading)
    with pytest.raises(error, match=message):
        loop.train(make_config(tiny, tmp_path / "run", **overrides))


def test_malformed_data_names_file_and_line(tiny, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"text": "fine"}\n{"text": "broken"\n')
    monkeypatch.setattr(prepare.models, "load_model", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(ValueError, match=r"train.jsonl:2"):
        loop.train(make_config(tiny, tmp_path / "run", data=str(bad)))


def test_sequence_longer_than_allowed_is_an_error(tiny, tmp_path):
    with pytest.raises(ValueError, match="max_seq_length=4"):
        loop.train(make_config(tiny, tmp_path / "run", max_seq_length=4))


def test_nan_loss_stops_and_names_the_iteration(tiny, tmp_path):
    with pytest.raises(loop.TrainingError, match=r"iteration \d+.*last good checkpoint"):
        loop.train(make_config(tiny, tmp_path / "run", learning_rate=1e9, warmup=0, iters=20, steps_per_save=1))


def test_yaml_recipe_precedence_and_unknown_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("iters: 7\nbatch_size: 2\n")
    parser = __import__("argparse").ArgumentParser()
    config_module.add_arguments(parser)
    config = config_module.resolve(parser.parse_args(["--config", str(recipe), "--iters", "9"]))
    assert (config.iters, config.batch_size, config.lora_rank) == (9, 2, config_module.TrainConfig().lora_rank)
    recipe.write_text("iterz: 7\n")
    with pytest.raises(config_module.ConfigError, match="iterz"):
        config_module.load_yaml(recipe)


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
def test_qlora_trains(tiny, tmp_path, fine_tune_type):
    """QLoRA (4-bit base weights) learns, with LoRA and with DoRA."""
    summary = loop.train(
        make_config(tiny, tmp_path / "qlora", qlora=True, iters=20, steps_per_eval=0, fine_tune_type=fine_tune_type)
    )
    assert summary["final_loss"] < 0.9 * summary["first_loss"]
    header = records.read(tmp_path / "qlora" / "records.jsonl")[0]
    assert header["model"]["quantized"] is True


@pytest.mark.parametrize("fine_tune_type", config_module.FINE_TUNE_TYPES)
def test_gradient_checkpointing_gives_the_same_losses(tiny, tmp_path, fine_tune_type):
    for name, checkpointed in (("plain", False), ("ckpt", True)):
        loop.train(
            make_config(
                tiny,
                tmp_path / name,
                iters=4,
                steps_per_eval=0,
                grad_checkpoint=checkpointed,
                fine_tune_type=fine_tune_type,
            )
        )
    np.testing.assert_allclose(step_losses(tmp_path / "plain"), step_losses(tmp_path / "ckpt"), rtol=1e-5)


def test_cli_train_and_generate(tiny, tmp_path, capsys):
    from flashtune.cli import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny[0]),
                "--data",
                str(tiny[1]),
                "--out",
                str(run),
                "--iters",
                "3",
                "--batch-size",
                "2",
                "--lora-layers",
                "2",
                "--no-sample",
                "--attn",
                "baseline",
            ]
        )
        == 0
    )
    assert "3 iterations in" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["iters"] == 3
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny[0]),
                "--adapter-path",
                str(run),
                "--prompt",
                "the quick",
                "--max-tokens",
                "4",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip()


def test_batches_are_padded_to_the_planned_lengths(tiny):
    """Every batch shape a run records is one of the lengths planned from the run's own batches,
    and the plan is the whole run's even when resuming (same padding, same compiles)."""
    config = make_config(tiny, "unused", iters=40)
    _, tokenizer, _ = models.load_model(config.model)
    dataset = data.load_dataset(config.data, tokenizer).train
    plan, multiple = prepare.plan_pad_lengths(config, dataset, "cuda")
    assert plan and all(length % 128 == 0 for length in plan) and multiple == 128
    longest = [data.longest_input(b) for b in data.batch_examples(dataset, 2, seed=config.seed, num_steps=40)]
    assert plan[-1] == -(-max(longest) // 128) * 128
    assert prepare.plan_pad_lengths(dataclasses.replace(config, pad_to_multiple=64), dataset, "cuda") == (None, 64)
    assert prepare.plan_pad_lengths(dataclasses.replace(config, fixed_length=256), dataset, "cpu") == ([256], 32)
