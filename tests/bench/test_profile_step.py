"""flashtune.bench.profile_step's graph count sees what fusing the projections saves."""

import mlx.core as mx

import flashtune  # noqa: F401  (BLAS before mlx)
from flashtune import models
from flashtune.bench import profile_step
from flashtune.patch import patch
from flashtune.train.fused_projections import fuse_projections
from flashtune.train.lora import adapter_config, apply_lora
from tests.tiny_models import write_tiny_hf_model


def test_fused_projections_launch_fewer_kernels(tmp_path):
    model, _, _ = models.load_model(str(write_tiny_hf_model(tmp_path / "llama", model_type="llama")))
    apply_lora(model, adapter_config(2, 4, 20.0, 0.0))
    patch(model, "baseline")
    tokens = mx.random.randint(0, 100, (2, 17))
    batch = (tokens[:, :-1], tokens[:, 1:], mx.ones((2, 16)))
    step, state = profile_step.fresh_step(model)
    nodes, kernels = profile_step.graph_size(step, batch, state)
    assert 0 < kernels < nodes
    assert fuse_projections(model) == 4
    step, state = profile_step.fresh_step(model)
    fused_nodes, fused_kernels = profile_step.graph_size(step, batch, state)
    assert fused_kernels < kernels
