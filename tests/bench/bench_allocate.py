"""The package's benchmarks, measured side by side in one run on the simulator.

Prints each figure next to its reference and the ratio against its target:
allocate+free of 4 KiB vs numpy.empty, allocate with 100,000 live buffers vs
with 10, ``buf[:] = a`` vs a plain ndarray copy for 64 MiB, and system calls per
flush, counted twice: by the backend's own counter and by strace (every
syscall the process makes between two markers). Exit status 0 whatever the
ratios: a benchmark reports, the README quotes it.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
from typing import Any

import numpy as np
from pynq_alloc import allocate
from pynq_alloc.backends.sim import SimRegion, Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend
from pynq_alloc.bench import run_all

FLUSHES = 1000

STRACED = textwrap.dedent(f"""
    import os
    from pynq_alloc import allocate
    from pynq_alloc.backends.sim import Simulator
    with Simulator() as sim:
        buf = allocate(4096, "u1", backend=sim.backend(), cacheable=True)
        buf.flush()  # opens the sync file once
        os.write(2, b"BEGIN-FLUSHES\\n")
        for _ in range({FLUSHES}):
            buf.flush()
        os.write(2, b"END-FLUSHES\\n")
""")


def syscalls_per_flush_by_strace() -> str:
    if shutil.which("strace") is None:
        return "strace not installed: not counted"
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as log:
        subprocess.run(["strace", "-f", "-o", log.name, sys.executable, "-c", STRACED],
                       check=True, capture_output=True)
        lines = log.read().splitlines()
    begin = next(i for i, line in enumerate(lines) if "BEGIN-FLUSHES" in line)
    end = next(i for i, line in enumerate(lines) if "END-FLUSHES" in line)
    calls = [line for line in lines[begin + 1:end] if re.match(r"^\d+\s+\w+\(", line)]
    names = sorted({re.match(r"^\d+\s+(\w+)\(", c).group(1) for c in calls})  # type: ignore[union-attr]
    per = len(calls) / FLUSHES
    # The simulator answers the sync ioctl in-process (it looks the descriptor up
    # with one readlink), so strace sees that stand-in, not an ioctl: this line proves
    # no hidden extra calls; the real ioctl is counted on the driver by the target
    # suite (tests/target/test_data.py).
    return (f"{'system calls per flush, simulator (strace)':<46} {per:12.3f} "
            f"({', '.join(names)}: the simulator's stand-in for the one ioctl)  "
            f"target 1       {'meets' if per == 1 else 'MISSES'}")


def _best(stmt: object, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number  # type: ignore[arg-type]


def zeroed_allocation(backend: UdmabufBackend) -> None:
    """Fresh buffers read zero (PYNQ's are): what that costs next to numpy.zeros, which
    gets zero pages from the kernel lazily, and to the bare memset of the same bytes."""
    print("zero-filled allocate+free vs numpy.zeros (and the memset alone):")
    for size, number in ((4096, 2000), (16 << 20, 20)):
        for cacheable in (False, True):
            ours = _best(lambda n=size, c=cacheable: allocate(
                n, "u1", backend=backend, cacheable=c).freebuffer(), number)
            ref = _best(lambda n=size: np.zeros(n, np.uint8), number)
            scratch = np.ones(size, np.uint8)
            fill = _best(lambda a=scratch: a.fill(0), number)
            label = f"{size >> 10} KiB {'cached' if cacheable else 'write-combine'}"
            print(f"  {label:<26} {ours * 1e6:10.1f} us  numpy.zeros {ref * 1e6:9.2f} us "
                  f"= {ours / ref:7.1f}x   memset alone {fill * 1e6:9.1f} us "
                  f"({fill / ours:5.1%} of ours)")


def _echo_shape(conn: Any) -> None:
    """Child of the share benchmark: receive arrays, answer with one number each."""
    while True:
        item = conn.recv()
        if item is None:
            return
        conn.send(int(item[0]))
        del item


def handing_over(sim: Simulator, nbytes: int = 16 << 20, rounds: int = 20) -> None:
    """A 16 MiB buffer handed to another process: by share handle vs by plain pickling
    (a copy), each a round trip through a multiprocessing pipe to a spawned process."""
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    child = context.Process(target=_echo_shape, args=(there,))
    child.start()
    try:
        buf = allocate(nbytes, "u1", backend=sim.backend())
        buf[:] = 1

        def trip(item: Any) -> float:
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                here.send(item)
                here.recv()
                best = min(best, time.perf_counter() - start)
            return best

        trip(buf.share())  # warm-up: the child maps the region once
        shared, copied = trip(buf.share()), trip(buf)
        print(f"hand a {nbytes >> 20} MiB buffer to another process: share "
              f"{shared * 1e6:9.1f} us vs pickling {copied * 1e6:9.1f} us = "
              f"{copied / shared:6.1f}x faster (no copy)")
    finally:
        here.send(None)
        child.join(timeout=60)


def main() -> int:
    print(f"pynq-alloc benchmarks (simulator on {os.uname().machine}, numpy "
          f"{__import__('numpy').__version__}, Python {sys.version.split()[0]})")
    with Simulator([SimRegion("udmabuf0", 1 << 30, 0x40000000)]) as sim:
        run_all(sim.backend(), quick="--quick" in sys.argv)
        zeroed_allocation(sim.backend())
        handing_over(sim)
    print(syscalls_per_flush_by_strace())
    return 0


if __name__ == "__main__":
    sys.exit(main())
