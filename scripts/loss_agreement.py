"""Do two attention implementations train alike? Loss curves of one model's runs, side by side. (see flashtune.bench.loss_agreement for usage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from flashtune.bench.loss_agreement import main

if __name__ == "__main__":
    sys.exit(main())
