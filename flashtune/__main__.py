"""`python -m flashtune` is the `flashtune` command (handy where the console script is not installed)."""

import sys

from flashtune.cli import main

sys.exit(main())
