"""Two attention implementations' time ratio over repeated benchmark runs (see flashtune.bench.attention_ratios for usage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from flashtune.bench.attention_ratios import main

if __name__ == "__main__":
    sys.exit(main())
