"""Run an unmodified script or module with every mlx-lm Llama/Qwen2 model it builds patched.

    python -m flashtune.patch --attn NAME SCRIPT [ARGS...]
    python -m flashtune.patch --attn NAME -m MODULE [ARGS...]

The target runs as ``python SCRIPT ARGS`` / ``python -m MODULE ARGS`` would (``runpy``: same
``sys.argv``, ``__name__ == "__main__"``, ``sys.path[0]``, exit code and tracebacks; a script's
``__file__`` is the path as typed, where Python 3.9+ makes it absolute).

Hook: while the target runs, the ``__init__`` of each supported architecture's top-level model
class (``mlx_lm.models.llama.Model``, ``mlx_lm.models.qwen2.Model``) is wrapped so that every
instance is patched as soon as it is built. Construction is the one point every path goes
through: ``mlx_lm.load`` and ``load_model``, ``mlx_lm lora`` (which bound ``load`` at import
time, so rebinding ``mlx_lm.utils.load`` would miss it), and scripts that build
``Model(args)`` themselves. Patching there, before weights, quantization and LoRA layers
arrive, is safe because ``flashtune.patch`` leaves the parameter tree alone. The wrap is a
class-level change, which the library API never makes; it is acceptable here because this
process exists only to run the target, and it is undone when the target ends. mlx-lm's
attention classes and ``scaled_dot_product_attention`` are never touched.

Output: one line on stderr per distinct (model class, attention) patched, e.g.
``flashtune: patched 2 attention blocks of llama model (mlx_lm.models.llama.Model) with
'practical'``, and a warning at the end if the target built no supported model.

Report: with ``FLASHTUNE_PATCH_REPORT=PATH`` in the environment, the runner writes, when the
target ends (normally, by ``sys.exit`` or by an exception), a JSON object to PATH::

    {"attn": "practical", "target": ["-m", "mlx_lm", "lora", ...], "exit_code": 0,
     "models": [{"class": "mlx_lm.models.llama.Model", "model_type": "llama",
                 "blocks": 2}],
     "calls": {"practical": 14}}

``calls`` counts Python-level calls of the attention function. Under ``mx.compile`` (as in
``mlx_lm lora``'s training step) a call happens while tracing, so a compiled step counts once
per trace, not once per execution; a non-zero count proves the implementation is in the graph.
Subprocesses the target starts are not patched.
"""

import argparse
import functools
import importlib
import importlib.util
import json
import logging
import os
import runpy
import sys
from collections.abc import Callable, Sequence

from flashtune import attention
from flashtune.log import logger, say_once
from flashtune.patch import SUPPORTED, patch, patch_info

REPORT_ENV = "FLASHTUNE_PATCH_REPORT"
USAGE = "python -m flashtune.patch --attn NAME (SCRIPT | -m MODULE) [ARGS...]"

Target = tuple[str, str]  # ("script", path) or ("module", name)


class CountingAttention:
    """An attention function that counts its calls; what the runner patches models with."""

    def __init__(self, name: str):
        self.fn = attention.get(name)
        self.attention_name = name
        self.calls = 0

    def __call__(self, q, k, v, *, scale, mask=None, segments=None):
        self.calls += 1
        return self.fn(q, k, v, scale=scale, mask=mask, segments=segments)


class PatchRun:
    """Patches the models the target builds and remembers them for the log and the report."""

    def __init__(self, attn: CountingAttention):
        self.attn = attn
        self.models: list[dict] = []

    def on_model(self, model) -> None:
        patch(model, self.attn)
        info = patch_info(model)
        cls = f"{type(model).__module__}.{type(model).__qualname__}"
        entry = {"class": cls, "model_type": info["model_type"], "blocks": len(info["blocks"])}
        self.models.append(entry)
        say_once(
            f"runner:{cls}:{entry['blocks']}:{self.attn.attention_name}",
            f"patched {entry['blocks']} attention blocks of {entry['model_type']} model "
            f"({cls}) with {self.attn.attention_name!r}",
            level=logging.INFO,
        )

    def report(self, target: Sequence[str], exit_code: int) -> dict:
        return {
            "attn": self.attn.attention_name,
            "target": list(target),
            "exit_code": exit_code,
            "models": self.models,
            "calls": {self.attn.attention_name: self.attn.calls},
        }


def _wrapped_init(original: Callable, on_model: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        on_model(self)

    return __init__


def install_hooks(on_model: Callable) -> Callable[[], None]:
    """Wraps the supported model classes' ``__init__`` to call ``on_model(instance)`` after it.

    Args:
        on_model: called with each new instance of a supported model class (or subclass).

    Returns:
        A function that puts the original ``__init__`` methods back.
    """
    undo = []
    for arch in SUPPORTED.values():
        cls = getattr(importlib.import_module(arch.module), arch.model_class)
        undo.append((cls, cls.__dict__.get("__init__")))
        cls.__init__ = _wrapped_init(cls.__init__, on_model)

    def uninstall() -> None:
        for cls, own_init in reversed(undo):
            if own_init is None:
                del cls.__init__
            else:
                cls.__init__ = own_init

    return uninstall


def split_argv(argv: Sequence[str]) -> tuple[list[str], Target | None, list[str]]:
    """Splits ``argv`` into the runner's options, the target and the target's arguments.

    Everything after ``SCRIPT`` or ``-m MODULE`` belongs to the target, untouched.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            if i + 1 == len(argv):
                return list(argv[:i]), None, []
            return list(argv[:i]), ("module", argv[i + 1]), list(argv[i + 2 :])
        if arg == "--attn":
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return list(argv[:i]), ("script", arg), list(argv[i + 1 :])
    return list(argv), None, []


def build_parser() -> argparse.ArgumentParser:
    """The runner's own options (the target's arguments never reach it)."""
    parser = argparse.ArgumentParser(
        prog="python -m flashtune.patch",
        usage=USAGE,
        description="Run a script or module with the attention of every mlx-lm Llama/Qwen2 "
        f"model it builds swapped. Set {REPORT_ENV}=PATH to get a JSON report of the "
        "models patched and the attention calls.",
    )
    parser.add_argument(
        "--attn",
        required=True,
        metavar="NAME",
        help=f"attention implementation: {', '.join(attention.names())}",
    )
    return parser


def _exit_code(e: SystemExit) -> int:
    """The process exit status Python derives from ``e`` (None: 0; int: itself; else 1)."""
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else 1


def run_target(target: Target, args: list[str]) -> None:
    """Runs the target as ``python SCRIPT`` / ``python -m MODULE`` would."""
    kind, name = target
    if kind == "script":
        sys.argv = [name] + args
        # python SCRIPT puts the script's folder first on sys.path, where -m put the cwd.
        sys.path[0] = os.path.dirname(os.path.abspath(name))
        runpy.run_path(name, run_name="__main__")
    else:
        sys.argv = [name] + args  # run_module replaces argv[0] with the module's file
        runpy.run_module(name, run_name="__main__", alter_sys=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flashtune.patch``; returns or raises the target's exit."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    own, target, target_args = split_argv(argv)
    options = parser.parse_args(own)
    if target is None:
        parser.error("missing SCRIPT or -m MODULE to run")
    try:
        attention.check_name(options.attn)
    except KeyError as e:
        parser.error(e.args[0])
    if target[0] == "script" and not os.path.exists(target[1]):
        parser.error(f"can't open file {target[1]!r}: no such file")
    if target[0] == "module":
        try:
            found = importlib.util.find_spec(target[1]) is not None
        except ImportError as e:  # a parent package is missing or fails to import
            parser.error(f"cannot import {target[1]!r}: {e}")
        if not found:
            parser.error(f"no module named {target[1]!r}")

    patch_run = PatchRun(CountingAttention(options.attn))
    uninstall = install_hooks(patch_run.on_model)
    exit_code = 1
    try:
        run_target(target, target_args)
        exit_code = 0
    except SystemExit as e:
        exit_code = _exit_code(e)
        raise
    finally:
        uninstall()
        if len(patch_run.models) > 1:
            logger.info(f"patched {len(patch_run.models)} models with {options.attn!r} in this run")
        if not patch_run.models:
            logger.warning(
                f"the target built no mlx-lm model of a supported type ({', '.join(SUPPORTED)}); nothing was patched"
            )
        report_path = os.environ.get(REPORT_ENV)
        if report_path:
            shown = ["-m", target[1]] if target[0] == "module" else [target[1]]
            with open(report_path, "w") as f:
                json.dump(patch_run.report(shown + target_args, exit_code), f, indent=1)
    return 0
