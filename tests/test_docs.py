"""The documents stay true to the code: the training options table is the one the config generates."""

import re
from pathlib import Path

from flashtune.config import options_table

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_training_options_table_matches_the_config():
    text = (DOCS / "training.md").read_text()
    table = re.search(r"<!-- options:begin -->\n(.*)\n<!-- options:end -->", text, re.S)
    assert table, "docs/training.md lost its options markers"
    assert table.group(1) == options_table(), (
        "docs/training.md's options table is stale: paste flashtune.config.options_table() between its markers"
    )
