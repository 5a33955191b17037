"""The error the Metal emulator raises: a kernel that breaks a Metal rule, fails to compile, or runs out of bounds."""


class EmulationError(RuntimeError):
    """A kernel failed under emulation; the message names the kernel and what went wrong."""
