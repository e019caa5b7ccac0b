"""Soak: 1,000,000 allocate/free cycles; RSS and pool usage must stay flat.

Prints both at the start, every 200,000 cycles and at the end, and the growth. Sizes
and dtypes vary (1 B .. 64 KiB), every tenth buffer takes a view that outlives its
free for one cycle (the deferred release path), every hundredth is flushed.
Exit status 1 when RSS grew by more than 2 MiB or the pool did not return to empty.
"""

from __future__ import annotations

import sys
import time

from pynq_alloc import allocate
from pynq_alloc.backends.sim import SimRegion, Simulator

CYCLES = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    dtypes = ["u1", "<u2", "<u4", "<f8"]
    with Simulator([SimRegion("udmabuf0", 64 << 20, 0x7E000000)]) as sim:
        backend = sim.backend()
        ledger = backend.handle(backend.region()).ledger
        allocate(1, backend=backend).freebuffer()  # maps the region, opens the ledger
        start_rss, start_used = rss_kib(), ledger.stats().used
        print(f"soak: {CYCLES} cycles; start RSS {start_rss} KiB, pool used {start_used} B")
        began = time.perf_counter()
        kept = None
        for i in range(1, CYCLES + 1):
            buf = allocate(1 + (i * 7919) % 8192, dtypes[i % 4], backend=backend)
            if i % 100 == 0:
                buf.flush()
            later = buf[1:] if i % 10 == 0 else None
            buf.freebuffer()
            kept = later  # the previous cycle's view dies here: its block goes back
            if i % 200_000 == 0:
                print(f"  {i:>9} cycles: RSS {rss_kib()} KiB, pool used {ledger.stats().used} B, "
                      f"{(time.perf_counter() - began) / i * 1e6:.1f} us/cycle")
        del kept, later
        end_rss, end_used = rss_kib(), ledger.stats().used
        ledger.check()
    grew = end_rss - start_rss
    print(f"soak: end RSS {end_rss} KiB ({grew:+d} KiB), pool used {end_used} B "
          f"(start {start_used} B)")
    return 0 if grew <= 2048 and end_used == start_used == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
