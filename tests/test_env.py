"""What run records say about where they ran."""

import re

from flashtune import env


def test_git_sha_from_checkout_names_the_commit(monkeypatch):
    monkeypatch.delenv("FLASHTUNE_GIT_SHA", raising=False)
    sha = env.git_sha()
    assert sha is None or re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", sha)


def test_git_sha_env_wins_over_a_stale_checkout(monkeypatch):
    monkeypatch.setenv("FLASHTUNE_GIT_SHA", "6f0c9b6")
    assert env.git_sha() == "6f0c9b6"
    assert env.run_info()["git_sha"] == "6f0c9b6"
