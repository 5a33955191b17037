"""Benchmark records without the file-system paths of the machine that made them.

A run's JSONL names the recipe, the model, the data, the output folders and the interpreter by
their paths on the machine that ran it (``/work/x/recipes/...``, ``/tmp/r/main/...``,
``/opt/venv/bin/python3``). Kept in the repository, those paths mean nothing elsewhere. Here every
path inside a record, also inside longer strings and command lists, is rewritten:

- a path under a known root becomes that root's name plus the rest (``<cache>/models/x``), or
  plain relative where the name is empty (the repository: ``recipes/finetune-x.yaml``);
- an interpreter (``.../python``, ``python3``, ``python3.12``) becomes ``python``;
- any other absolute path keeps its last two components: ``<abs>/ft-exports/model-x``.

Numbers, keys and every other string are left as they are, so a record without paths is written
back byte for byte as it was read.
"""

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ABS = "<abs>"
INTERPRETER = re.compile(r"python[0-9.]*")
# An absolute path starts at a "/" that does not follow a word, a path or a URL scheme ("12/2",
# "tokens/s", "<cache>/x" and "https://" are not paths) and runs to whitespace or punctuation.
ABSOLUTE = re.compile(r"(?<![\w.~:/<>-])/[^\s\"'`<>|,;()\[\]{}]+")
TRAILING = ".:"


def portable_path(path: str, roots: Mapping[str, str]) -> str:
    """One absolute path in its portable form.

    Args:
        path: an absolute path.
        roots: root folder -> its portable name ("" for paths relative to that root); the
            longest matching root wins.

    Returns:
        ``name/rest`` under a root, ``python`` for an interpreter, else ``<abs>/`` plus the
        path's last two components.
    """
    clean = path.rstrip("/") or "/"
    for root in sorted(roots, key=len, reverse=True):
        base = str(root).rstrip("/")
        if os.path.isabs(base) and (clean == base or clean.startswith(base + "/")):
            return "/".join(filter(None, [roots[root], clean[len(base) + 1 :]])) or "."
    parts = [p for p in clean.split("/") if p]
    if parts and INTERPRETER.fullmatch(parts[-1]):
        return "python"
    return "/".join([ABS, *parts[-2:]])


def _relative_root_pattern(roots: Mapping[str, str]) -> re.Pattern | None:
    """Matches a relative root (``.device/bench-cache``) where a path starts and goes on below it.

    Only a root followed by ``/`` matches inside a longer string, so a root spelled like a word
    ("results") leaves prose alone; a string that is exactly a root is handled by the caller.
    """
    relative = sorted((str(r).rstrip("/") for r in roots if not os.path.isabs(str(r))), key=len, reverse=True)
    if not relative:
        return None
    names = "|".join(re.escape(r) for r in relative)
    return re.compile(rf"(?<![\w.~/<>-])({names})/")


def portable_text(text: str, roots: Mapping[str, str]) -> str:
    """``text`` with every path in it rewritten by `portable_path` (relative roots renamed too).

    Args:
        text: any string, e.g. ``"from /work/x/.cache/models/m"``.
        roots: as for `portable_path`; relative roots match only at the start of a path.

    Returns:
        The string with each path replaced; a string without paths is returned unchanged.
    """

    def absolute(match: re.Match) -> str:
        token = match.group(0)
        core = token.rstrip(TRAILING)  # a sentence's full stop or a label's colon is not part of the path
        return portable_path(core, roots) + token[len(core) :]

    names = {str(r).rstrip("/"): name for r, name in roots.items() if not os.path.isabs(str(r))}
    if text.rstrip("/") in names:
        return names[text.rstrip("/")] or "."
    out = ABSOLUTE.sub(absolute, text)
    relative = _relative_root_pattern(roots)
    return relative.sub(lambda m: names[m.group(1)] + "/" if names[m.group(1)] else "", out) if relative else out


def portable_record(record: Any, roots: Mapping[str, str]) -> Any:
    """A copy of ``record`` with every path in its strings made portable, through dicts and lists.

    Args:
        record: a JSON-like value (dict, list, str, number, bool, None).
        roots: root folder -> portable name, as for `portable_path`.

    Returns:
        The rewritten copy; dict keys and non-string values are kept as they are.
    """
    if isinstance(record, dict):
        return {key: portable_record(value, roots) for key, value in record.items()}
    if isinstance(record, (list, tuple)):
        return type(record)(portable_record(value, roots) for value in record)
    if isinstance(record, str):
        return portable_text(record, roots)
    return record


def portable_file(path: str | Path, roots: Mapping[str, str], out: str | Path | None = None) -> Path:
    """Rewrites a JSONL file's records with `portable_record`, in place or into ``out``.

    Args:
        path: a JSONL file (one JSON object a line; blank lines are dropped).
        roots: root folder -> portable name, as for `portable_path`.
        out: where to write; default ``path`` itself (replaced in one rename).

    Returns:
        The path written.

    Raises:
        ValueError: a line is not JSON (names the file and line).
    """
    path = Path(path)
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not a JSON record ({error.msg})") from None
        lines.append(json.dumps(portable_record(record, roots)) + "\n")
    target = Path(out) if out is not None else path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".portable-tmp")
    tmp.write_text("".join(lines))
    tmp.replace(target)
    return target


def run_roots(results: Path | None = None, cache: Path | None = None, repo: Path | None = None) -> dict[str, str]:
    """The roots of a benchmark run, each folder as given and resolved.

    Args:
        results: the results folder (named ``<results>``).
        cache: the bench cache of models and data (named ``<cache>``).
        repo: the repository (paths under it become plain relative paths).

    Returns:
        A ``roots`` mapping for `portable_record` and `portable_file`.
    """
    roots: dict[str, str] = {}
    for folder, name in ((repo, ""), (results, "<results>"), (cache, "<cache>")):
        if folder is not None:
            for spelling in {str(folder), str(Path(folder).resolve())}:
                if spelling not in (".", "") and spelling.rstrip("/"):
                    roots[spelling.rstrip("/")] = name
    return roots
