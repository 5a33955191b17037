"""Peak memory of one training step against sequence length, one piece removed at a time (see flashtune.bench.long_context_memory for usage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from flashtune.bench.long_context_memory import main

if __name__ == "__main__":
    sys.exit(main())
