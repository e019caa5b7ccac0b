"""Drive a ledger to its next compaction from a test, with a bound."""

from __future__ import annotations

from typing import Callable

from pynq_alloc import allocate
from pynq_alloc import ledger as ledger_module
from pynq_alloc.backends.udmabuf import UdmabufBackend


def churn_until(backend: UdmabufBackend, done: Callable[[], bool]) -> None:
    """Allocate and free one small buffer until ``done()``; a ledger that never
    compacts fails here (the bound is four times the records that start a compaction)
    instead of looping until the file fills /dev/shm."""
    for _ in range(2 * ledger_module._COMPACT_MIN_RECORDS):
        if done():
            return
        allocate(64, "u1", backend=backend).freebuffer()
    assert done(), "no compaction after 16,384 records (8,192 allocate + free)"

