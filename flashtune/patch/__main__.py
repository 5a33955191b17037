"""``python -m flashtune.patch``: run a script or module with mlx-lm attention swapped."""

import sys

from flashtune.patch.runner import main

sys.exit(main())
