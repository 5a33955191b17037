"""Where the host's time goes in a LoRA training run on a GPU, where steps are bound by dispatch (see flashtune.bench.host_profile for usage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from flashtune.bench.host_profile import main

if __name__ == "__main__":
    sys.exit(main())
