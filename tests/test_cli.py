"""The command line reports bad input as one message naming the value and the choices."""

import pytest

from flashtune.cli import main


def test_unknown_attention_is_one_line_with_the_valid_names(capsys, monkeypatch):
    monkeypatch.delenv("FLASHTUNE_DEBUG", raising=False)
    assert main(["train", "--attn", "flash9"]) == 2
    err = capsys.readouterr().err
    assert "KeyError: unknown attention 'flash9'; valid names: baseline, practical, demo, poc" in err
    assert "Traceback" not in err


def test_unknown_model_names_the_choices(capsys, monkeypatch):
    monkeypatch.delenv("FLASHTUNE_DEBUG", raising=False)
    assert main(["train", "--model", "NoSuchModel-7B", "--init", "random"]) == 2
    err = capsys.readouterr().err
    assert "NoSuchModel-7B" in err and "SmolLM2-135M" in err


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("FLASHTUNE_DEBUG", "1")
    with pytest.raises(KeyError, match="flash9"):
        main(["train", "--attn", "flash9"])


def test_bad_values_are_refused_with_their_valid_range(capsys, monkeypatch):
    monkeypatch.delenv("FLASHTUNE_DEBUG", raising=False)
    assert main(["train", "--iters", "-5"]) == 2
    assert "--iters -5 is too small; it must be at least 1" in capsys.readouterr().err
    assert main(["train", "--config", "no-such-recipe"]) == 2
    assert "shipped recipes: finetune-qwen2.5-1.5b" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["cpu", "cuda", "metal"])
def test_attention_lists_each_implementation_and_its_path_here(capsys, monkeypatch, backend):
    from flashtune import attention, env

    monkeypatch.setattr(env, "backend", lambda: backend)
    monkeypatch.setattr(attention.poc, "backend", lambda: backend)
    assert main(["attention"]) == 0
    out = capsys.readouterr().out
    for name in attention.names():
        assert f"\n{name}\n  what: " in out
    paths = {name: attention.describe(name)["here"] for name in attention.names()}
    assert ("runs practical" in paths["poc"]) == (backend == "cpu")
    assert ("cuDNN" in paths["demo"]) == (backend == "cuda")
    assert ("no fused backward on Metal" in paths["demo"]) == (backend == "metal")
