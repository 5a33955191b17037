"""Fine-tuning: ``train(config)`` and the pieces it is made of.

prepare.py (checks, loading, LoRA, optimizer, resume) -> loop.py (the loop over small named
steps) -> step.py (the compiled update); records.py and iterations.py (per-iteration JSONL),
checkpoint.py (atomic checkpoints), lora.py and fused_projections.py (the adapters and their
fast form), evaluate.py (validation loss), interrupt.py (Ctrl-C saves, then stops).
"""

from flashtune.train.loop import train
from flashtune.train.records import format_summary, summarize

__all__ = ["format_summary", "summarize", "train"]
