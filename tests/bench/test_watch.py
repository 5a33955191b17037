"""The bench's watch on a run's process: the resident-memory cap and the time budget."""

import subprocess
import sys

import pytest

from flashtune.bench.watch import Watch, resident_gb

pytestmark = pytest.mark.skipif(resident_gb(1) is None, reason="needs Linux /proc")

HOG = "import time; block = bytearray(400 * 2**20); time.sleep(30)"  # 400 MiB resident, then waits


def test_a_process_past_the_memory_cap_is_stopped_and_named_out_of_memory():
    proc = subprocess.Popen([sys.executable, "-c", HOG])
    watch = Watch(proc, seconds_left=None, memory_cap_gb=0.2)
    assert proc.wait(timeout=20) != 0
    watch.cancel()
    assert watch.over_memory.startswith("out of memory: resident memory") and "cap of 0.2 GB" in watch.over_memory
    assert not watch.over_budget


def test_the_time_budget_stops_a_process_and_a_cap_it_stays_under_does_not():
    proc = subprocess.Popen([sys.executable, "-c", HOG])
    watch = Watch(proc, seconds_left=1.0, memory_cap_gb=4.0)
    proc.wait(timeout=20)
    watch.cancel()
    assert watch.over_budget and watch.over_memory is None
