"""Where a LoRA training step's time goes: full step, forward, backward, LM head + loss, attention, (see flashtune.bench.profile_step for usage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from flashtune.bench.profile_step import main

if __name__ == "__main__":
    sys.exit(main())
