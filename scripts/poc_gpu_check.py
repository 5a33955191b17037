"""One-call GPU check of poc's CUDA kernels: correctness sweep vs float64, then timings. (see flashtune.bench.poc_check for usage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from flashtune.bench.poc_check import main

if __name__ == "__main__":
    sys.exit(main())
