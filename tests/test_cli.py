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
