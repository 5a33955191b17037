"""Checkpoints that survive a crash at any moment: write a new folder, then rename it into place.

Layout of a run folder:
  adapters.safetensors, adapter_config.json   latest adapters, loadable by mlx-lm (--adapter-path)
  checkpoints/step-000050/                    adapters + optimizer.safetensors + state.json
  checkpoints/latest.json                     {"step": 50, "path": "step-000050"}
Every file is written under a temporary name and moved with os.replace (atomic on POSIX), and
``latest.json`` moves last, so a reader sees the old checkpoint or the new one, never half.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map_with_path

ADAPTERS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _save_safetensors(path: Path, arrays: dict[str, mx.array]) -> None:
    tmp = path.with_name(path.stem + ".tmp.safetensors")
    mx.save_safetensors(str(tmp), arrays)
    os.replace(tmp, path)


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def save(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: optim.Optimizer,
    adapter_config: dict[str, Any],
    state: dict[str, Any],
) -> Path:
    """Writes checkpoint ``step`` atomically and refreshes the top-level adapters.

    Args:
        run_dir: the run folder.
        step: iterations completed.
        model, optimizer: what to save (trainable parameters and optimizer state).
        adapter_config: mlx-lm's adapter_config.json content.
        state: trainer state to restore (config, data position...), JSON-serializable.

    Returns:
        The checkpoint folder.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    weights = adapter_weights(model)
    mx.save_safetensors(str(tmp / ADAPTERS), weights)
    optimizer_arrays = dict(tree_flatten(optimizer.state))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), optimizer_arrays)
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():  # a re-run of the same step (e.g. after resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_json(root / "latest.json", {"step": step, "path": name})
    _save_safetensors(Path(run_dir) / ADAPTERS, weights)
    _write_json(Path(run_dir) / ADAPTER_CONFIG, adapter_config)
    return final


def latest(run_dir: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    data = json.loads(pointer.read_text())
    return data["step"], pointer.parent / data["path"]


def load(folder: Path, model: nn.Module, optimizer: optim.Optimizer) -> dict[str, Any]:
    """Restores adapters and optimizer state from a checkpoint folder.

    (The trainer reseeds the RNG from (seed, iteration) at every step, so no RNG state is saved.)

    Returns:
        The trainer state saved with it (``step`` included).
    """
    folder = Path(folder)
    model.load_weights(list(mx.load(str(folder / ADAPTERS)).items()), strict=False)
    arrays = mx.load(str(folder / "optimizer.safetensors"))
    # Fill the optimizer's own state tree (built from the model) rather than rebuilding it
    # from flat names, so list/dict structure matches what the compiled step expects.
    optimizer.init(model.trainable_parameters())
    missing = sorted(set(dict(tree_flatten(optimizer.state))) - set(arrays))
    if missing:
        raise ValueError(f"checkpoint {folder} lacks optimizer state for {missing[:3]}...")
    optimizer.state = tree_map_with_path(lambda path, _: arrays[path], optimizer.state)
    mx.eval(model.parameters(), optimizer.state)
    return json.loads((folder / "state.json").read_text())
