"""Every recipe loads with flashtune's strict YAML reader, and each default model has its pair."""

from pathlib import Path

import pytest

from flashtune.bench.finetune import DEFAULTS, recipe_path
from flashtune.config import ConfigError, TrainConfig, load_yaml, resolve

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_loads(path):
    values = load_yaml(path)
    assert values, f"{path} is empty"
    config = resolve(None, **values)
    assert isinstance(config, TrainConfig) and config.sample is False  # timing runs never sample
    defaults = TrainConfig()
    assert any(getattr(config, k) != getattr(defaults, k) for k in values), "a recipe holds changes from the defaults"


@pytest.mark.parametrize("model", sorted({m for d in DEFAULTS.values() for m in d["models"]}))
@pytest.mark.parametrize("suite", ["main", "sweep", "packing"])
def test_default_models_have_recipes(model, suite):
    path = recipe_path(suite, model, RECIPES)
    assert path.is_file(), path
    assert load_yaml(path)["model"] == model


def test_unknown_keys_are_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "finetune-tinyllama-1.1b.yaml").read_text() + "lora_alpha: 16\n")
    with pytest.raises(ConfigError, match="lora_alpha"):
        load_yaml(bad)


def test_big_model_recipes_match_the_anchor_settings():
    for model in DEFAULTS["gpu"]["models"]:
        config = resolve(None, **load_yaml(recipe_path("main", model, RECIPES)))
        assert (config.iters, config.batch_size, config.max_seq_length) == (100, 4, 1024)
        assert (config.lora_layers, config.lora_rank, config.lora_scale) == (16, 8, 20.0)
