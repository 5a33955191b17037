"""scripts/profile_step.py's timing-only variants must compute what they stand in for."""

import importlib.util
from pathlib import Path

import pytest

import flashtune  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten
from flashtune import models
from flashtune.lora import adapter_config, apply_lora
from flashtune.train import loss_sum
from tests.tiny_models import write_tiny_hf_model

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("profile_step", ROOT / "scripts" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_fused_projections_give_the_same_loss(tmp_path, model_type):
    profile_step = load_script()
    model, _, _ = models.load_model(str(write_tiny_hf_model(tmp_path / model_type, model_type=model_type)))
    apply_lora(model, adapter_config(2, 4, 20.0, 0.0))
    for _, module in model.named_modules():  # LoRA B starts at zero; make the branch count
        if "lora_b" in module:
            module.lora_b = 0.05 * mx.random.normal(module.lora_b.shape)
    tokens = mx.random.randint(0, 100, (2, 17))
    batch = (tokens[:, :-1], tokens[:, 1:], mx.ones((2, 16)))
    before = loss_sum(model, *batch)[0].item()
    profile_step.fuse_projections(model)
    fused = [m for _, m in model.named_modules() if isinstance(m, profile_step._FusedProjections)]
    assert len(fused) == 4  # q/k/v and gate/up of the 2 LoRA'd blocks
    assert loss_sum(model, *batch)[0].item() == pytest.approx(before, rel=1e-5)
    # 2 blocks x (fused q/k/v, fused gate/up, o_proj, down_proj) x (A, B)
    assert len(tree_flatten(model.trainable_parameters())) == 16


def test_fused_projections_launch_fewer_kernels(tmp_path):
    profile_step = load_script()
    model, _, _ = models.load_model(str(write_tiny_hf_model(tmp_path / "llama", model_type="llama")))
    apply_lora(model, adapter_config(2, 4, 20.0, 0.0))
    tokens = mx.random.randint(0, 100, (2, 17))
    batch = (tokens[:, :-1], tokens[:, 1:], mx.ones((2, 16)))
    step, state = profile_step.fresh_step(model)
    nodes, kernels = profile_step.graph_size(step, batch, state)
    assert 0 < kernels < nodes
    profile_step.fuse_projections(model)
    step, state = profile_step.fresh_step(model)
    fused_nodes, fused_kernels = profile_step.graph_size(step, batch, state)
    assert fused_kernels < kernels
