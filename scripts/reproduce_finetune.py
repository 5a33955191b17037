"""`make reproduce-finetune`: the 100-iteration comparison of every attention implementation and
mlx_lm.lora, plus a sequence-length sweep, as per-iteration JSONL, Markdown tables and PNG plots.

    python scripts/reproduce_finetune.py                          # this device's defaults
    python scripts/reproduce_finetune.py --models TinyLlama-1.1B --impls demo,baseline --skip-existing
    python scripts/reproduce_finetune.py --dry-run                # the plan only

See `python scripts/reproduce_finetune.py --help` and flashtune/bench/finetune.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

import flashtune  # noqa: F401  (BLAS before mlx)
from flashtune.bench.finetune import main

if __name__ == "__main__":
    sys.exit(main())
