"""Benchmarks measured side by side in one run; each prints a ratio and its target.

The work is sized to the region the buffers come from (the first region, where
``allocate()`` puts them): a 16 MiB board pool cannot hold 100,000 live 4 KiB
buffers, so :func:`run_all` scales the counts and sizes down to half the region's
free space and says so in each result's name.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np

from .allocate import allocate
from .backends import get_backend

BLOCK = 4096  # bytes of one small buffer (1024 x u4)


@dataclass
class Ratio:
    name: str
    ours: float
    reference: float
    unit: str
    target: str
    ok: bool

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("inf")

    def line(self) -> str:
        verdict = "meets" if self.ok else "MISSES"
        return (f"{self.name:<46} {self.ours:12.3f} vs {self.reference:12.3f} {self.unit:<7} "
                f"ratio {self.ratio:8.2f}  target {self.target:<7} {verdict}")


def best_of(fn: Callable[[], Any], number: int, repeat: int = 5) -> float:
    """Best per-call time in microseconds over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best = min(best, (time.perf_counter() - start) / number)
    finally:
        gc.enable()
    return best * 1e6


def allocate_vs_empty(backend: Any = None, number: int = 2000, repeat: int = 5) -> Ratio:
    def ours() -> None:
        allocate(1024, "u4", backend=backend).freebuffer()

    def theirs() -> None:
        np.empty(1024, "u4")

    a, b = best_of(ours, number, repeat), best_of(theirs, number, repeat)
    return Ratio("allocate+free 4 KiB vs numpy.empty", a, b, "us", "<= 10x", a / b <= 10)


def live_buffers_scaling(backend: Any = None, many: int = 100_000, few: int = 10,
                         number: int = 2000, repeat: int = 5) -> Ratio:
    def cost_with(live: int) -> float:
        held = [allocate(1024, "u4", backend=backend) for _ in range(live)]
        try:
            return best_of(lambda: allocate(1024, "u4", backend=backend).freebuffer(), number,
                           repeat)
        finally:
            for buf in held:
                buf.freebuffer()
            del held

    a, b = cost_with(many), cost_with(few)
    return Ratio(f"allocate+free, {many} live 4 KiB bufs vs {few}", a, b, "us", "<= 2x",
                 a / b <= 2)


def _size_label(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes % (1 << 20) == 0 else f"{nbytes >> 10} KiB"


def copy_vs_ndarray(backend: Any = None, nbytes: int = 64 << 20) -> Ratio:
    src = np.arange(nbytes // 4, dtype="u4")
    buf = allocate(nbytes // 4, "u4", backend=backend, cacheable=True)
    plain = np.empty_like(src)
    try:
        buf[:] = src  # first touch of the pages happens outside the timing, as for `plain`
        plain[:] = src

        def ours() -> None:
            buf[:] = src

        def theirs() -> None:
            plain[:] = src

        a, b = best_of(ours, 3), best_of(theirs, 3)
    finally:
        buf.freebuffer()
    # For a copy, "faster" means higher throughput: report throughput (GB/s).
    ours_tp, ref_tp = nbytes / a / 1e3, nbytes / b / 1e3
    return Ratio(f"buf[:] = a vs ndarray copy, {_size_label(nbytes)} (GB/s)", ours_tp, ref_tp,
                 "GB/s", ">= 0.9x",
                 ours_tp / ref_tp >= 0.9)


def syscalls_per_flush(backend: Any = None, flushes: int = 1000) -> Ratio:
    buf = allocate(4096, "u1", backend=backend, cacheable=True)  # write-combine needs no flush
    try:
        handle = get_backend(backend).handle(buf.region)
        buf.flush()  # opens the sync channel once
        before = handle.sync_calls
        for _ in range(flushes):
            buf.flush()
        per_flush = (handle.sync_calls - before) / flushes
    finally:
        buf.freebuffer()
    return Ratio("sync system calls per flush (counted)", per_flush, 1.0, "calls", "1",
                 per_flush == 1.0)


def room(backend: Any = None) -> int:
    """Bytes the benchmarks may hold at once: half the free space of the first
    region (the one ``allocate()`` uses), leaving the rest to other users."""
    from . import regions

    found = regions(backend)
    if not found:
        return 0
    return found[0].free // 2


def run_all(backend: Any = None, quick: bool = False,
            out: Optional[Callable[[str], None]] = print) -> List[Ratio]:
    """Every benchmark, each printed through ``out`` as soon as it is measured.
    Counts and sizes are the requested ones (``quick``: smaller) cut down to
    :func:`room`; a cut is announced before the results."""
    say = out if out is not None else (lambda line: None)
    number, repeat = (200, 3) if quick else (2000, 5)
    want_live, want_copy = (10_000, 8 << 20) if quick else (100_000, 64 << 20)
    space = room(backend)
    live = max(10, min(want_live, space // BLOCK))
    copy = max(1 << 20, min(want_copy, space // 2 // (1 << 20) * (1 << 20)))
    cuts = []
    if live < want_live:
        cuts.append(f"{live} live 4 KiB buffers instead of {want_live}")
    if copy < want_copy:
        cuts.append(f"a {_size_label(copy)} copy instead of {_size_label(want_copy)}")
    if cuts:
        say(f"sized to the region: {space >> 20} MiB usable (half its free space), so "
            + " and ".join(cuts))
    steps: List[Callable[[], Ratio]] = [
        lambda: allocate_vs_empty(backend, number, repeat),
        lambda: live_buffers_scaling(backend, live, 10, number, repeat),
        lambda: copy_vs_ndarray(backend, copy),
        lambda: syscalls_per_flush(backend),
    ]
    results = []
    for step in steps:
        result = step()
        results.append(result)
        say(result.line())
    return results
