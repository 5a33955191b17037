"""The trainer tests' tiny model folder and dataset, written once per test module."""

import pytest

from tests.tiny_models import write_text_dataset, write_tiny_hf_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, dataset folder) of a 2-block Llama and a small text dataset."""
    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_hf_model(root / "model"), write_text_dataset(root / "data")
