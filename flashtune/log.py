"""One logger for the package, and a way to say something once per process."""

import logging
import sys

logger = logging.getLogger("flashtune")
if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("flashtune: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

_said = set()


def say_once(key: str, message: str, level: int = logging.WARNING) -> None:
    """Logs ``message`` the first time ``key`` is seen in this process."""
    if key in _said:
        return
    _said.add(key)
    logger.log(level, message)
