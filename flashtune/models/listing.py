"""`flashtune models`: the aliases, what is embedded or cached, parameter counts and sizes."""

from typing import Any

from . import gguf, hub, random_init
from .spec import ALIASES, DEFAULT_MODEL, EMBEDDED, EMBEDDED_REPO_ID, SHIPPED_CONFIGS


def _embedded_status() -> tuple[str, int | None]:
    try:
        p = gguf.embedded_gguf_path()
    except FileNotFoundError:
        return f"missing: {gguf.INSTALL_HINT}", None
    return f"embedded ({p.name}, in the {gguf.EMBEDDED_DISTRIBUTION} wheel)", p.stat().st_size


def list_models() -> list[dict[str, Any]]:
    """Rows for `flashtune models`: every alias plus other cached Hub models; no network.

    Returns:
        Dicts with keys alias, repo_id, model_type, params, max_context, status, size_bytes,
        random_init (whether init="random" works offline).
    """
    rows = []
    for alias, repo in ALIASES.items():
        repo_id = EMBEDDED_REPO_ID if repo == EMBEDDED else repo
        config = random_init.shipped_config(SHIPPED_CONFIGS[repo_id])
        if repo == EMBEDDED:
            status, size = _embedded_status()
        else:
            cached = hub.cached_snapshot(repo_id)
            status = "not cached (hub download, or --init random)"
            if cached is not None:
                status = "cached" if any(cached.glob("model*.safetensors")) else "cached (config only)"
            size = hub.folder_size(cached) if cached is not None else None
        rows.append(_row(alias, repo_id, config, status, size, random_ok=True))
    known = {ALIASES[a] for a in ALIASES}
    for repo_id, snapshot in _other_cached_models():
        if repo_id in known:
            continue
        from mlx_lm.utils import load_config

        rows.append(_row(repo_id, repo_id, load_config(snapshot), "cached", hub.folder_size(snapshot), True))
    return rows


def _row(alias, repo_id, config, status, size, random_ok) -> dict[str, Any]:
    try:
        params = random_init.count_parameters(random_init.build_model(config))
    except (ValueError, KeyError, TypeError):  # an architecture mlx-lm does not know
        params = None
    return {
        "alias": alias,
        "repo_id": repo_id,
        "model_type": config.get("model_type"),
        "params": params,
        "max_context": config.get("max_position_embeddings"),
        "status": status,
        "size_bytes": size,
        "random_init": random_ok and params is not None,
    }


def _other_cached_models():
    """(repo_id, snapshot) of cached Hub models with a config.json, read from the cache on disk."""
    root = hub.hub_cache_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.glob("models--*--*")):
        repo_id = folder.name[len("models--") :].replace("--", "/", 1)
        snapshot = hub.cached_snapshot(repo_id)
        if snapshot is not None:
            out.append((repo_id, snapshot))
    return out


def _params_text(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B ({n:,})" if n >= 1e9 else f"{n / 1e6:.1f}M ({n:,})"


def _bytes_text(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_models_table(rows: list[dict[str, Any]] | None = None) -> str:
    """A Markdown table of `list_models()` rows.

    Args:
        rows: rows from `list_models`; None calls it.

    Returns:
        The table text, ending with a line on how random-init models are labelled.
    """
    rows = list_models() if rows is None else rows
    header = ["model", "Hub repo", "type", "params", "max context", "local copy", "size", "--init random"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["alias"],
            r["repo_id"],
            r["model_type"] or "-",
            _params_text(r["params"]),
            str(r["max_context"] or "-"),
            r["status"],
            _bytes_text(r["size_bytes"]),
            "yes" if r["random_init"] else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Default: {DEFAULT_MODEL}. Random-init weights are architecture-exact and meant for "
        "timing; every output made from them says so."
    )
    return "\n".join(lines)
