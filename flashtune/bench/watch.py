"""Stops a benchmark run's process when the call's time budget runs out or its memory passes a cap.

The memory cap reads the process's resident memory from /proc (Linux) a few times a second.
A run that passes it is killed and its log says "out of memory", so that a benchmark pushing
towards its limits records the failure as a result, instead of the kernel's OOM killer choosing
which process on the machine dies. An address-space limit (RLIMIT_AS) is no substitute: at a
length needing more memory than the limit, mlx_lm lora died of a segmentation fault, no message.
"""

import subprocess
import threading
from pathlib import Path

POLL_S = 0.2


def resident_gb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in GB (1e9 bytes), or None where /proc cannot tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError, IndexError):
        return None
    return None


class Watch:
    """Watches one process: ``over_budget`` (killed at the time budget) and ``over_memory``
    (the log line to add when it was killed at the memory cap, else None)."""

    def __init__(self, proc: subprocess.Popen, seconds_left: float | None, memory_cap_gb: float | None):
        self.proc = proc
        self.over_budget = False
        self.over_memory: str | None = None
        self._done = threading.Event()
        self._timer = None
        if seconds_left is not None:
            self._timer = threading.Timer(max(seconds_left, 1.0), self._stop_at_budget)
            self._timer.daemon = True
            self._timer.start()
        if memory_cap_gb and resident_gb(proc.pid) is not None:
            threading.Thread(target=self._poll_memory, args=(memory_cap_gb,), daemon=True).start()

    def _stop_at_budget(self) -> None:
        self.over_budget = True
        self.proc.kill()

    def _poll_memory(self, cap_gb: float) -> None:
        while not self._done.wait(POLL_S):
            used = resident_gb(self.proc.pid)
            if used is not None and used > cap_gb:
                self.over_memory = f"out of memory: resident memory {used:.1f} GB passed the cap of {cap_gb:g} GB; the bench stopped the run"
                self.proc.kill()
                return

    def cancel(self) -> None:
        """Stops watching (the process has ended)."""
        self._done.set()
        if self._timer is not None:
            self._timer.cancel()
