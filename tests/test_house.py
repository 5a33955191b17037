"""House rules that keep the code readable: short functions, files that split before they sprawl,
and text that speaks of the project (no development-period vocabulary)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = sorted((ROOT / "flashtune").rglob("*.py"))
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 400
# Words about how the project was developed, not about the project.
DEVELOPMENT_WORDS = re.compile(
    r"\bsessions? \d|\blent (h100|h200|gpu|machine)|\bissue ?#?\d+\b|\bmachine [A-Z]\b", re.I
)


@pytest.mark.parametrize("path", PACKAGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_and_files_stay_short(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.name} has {text.count(chr(10))} lines; split it by job"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_text_speaks_of_the_project():
    files = [*PACKAGE, *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").rglob("*.md"), ROOT / "README.md",
             *(ROOT / "scripts").iterdir(), ROOT / "Makefile"]  # fmt: skip
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}"
        for path in files
        if path.is_file()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if DEVELOPMENT_WORDS.search(line)
    ]
    assert not found, "development-period vocabulary:\n" + "\n".join(found)
