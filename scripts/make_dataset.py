"""Generate flashtune's shipped dataset (capital-city answer cards) deterministically. (see flashtune.data.capitals for usage)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from flashtune.data.capitals import main

if __name__ == "__main__":
    sys.exit(main())
