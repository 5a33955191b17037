"""Ctrl-C during training: finish the current step, save a checkpoint, then stop."""

import signal

from flashtune.log import logger


class StopRequest:
    """Turns the first Ctrl-C into a flag the loop checks after each step; a second one stops now."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True
            logger.warning("interrupt: finishing this step, saving a checkpoint, then stopping")

        self._previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
