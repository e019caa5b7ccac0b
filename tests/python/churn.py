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
    churns = 2 * ledger_module._COMPACT_MIN_RECORDS
    for _ in range(churns):
        if done():
            return
        allocate(64, "u1", backend=backend).freebuffer()
    assert done(), f"no compaction after {2 * churns:,} records ({churns:,} allocate + free)"

