"""Benchmarks measured side by side in one run; each prints a ratio and its target."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np

from .allocate import allocate
from .backends import get_backend


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


def allocate_vs_empty(backend: Any = None, number: int = 2000) -> Ratio:
    def ours() -> None:
        allocate(1024, "u4", backend=backend).freebuffer()

    def theirs() -> None:
        np.empty(1024, "u4")

    a, b = best_of(ours, number), best_of(theirs, number)
    return Ratio("allocate+free 4 KiB vs numpy.empty", a, b, "us", "<= 10x", a / b <= 10)


def live_buffers_scaling(backend: Any = None, many: int = 100_000, few: int = 10,
                         number: int = 2000) -> Ratio:
    def cost_with(live: int) -> float:
        held = [allocate(1024, "u4", backend=backend) for _ in range(live)]
        try:
            return best_of(lambda: allocate(1024, "u4", backend=backend).freebuffer(), number)
        finally:
            for buf in held:
                buf.freebuffer()
            del held

    a, b = cost_with(many), cost_with(few)
    return Ratio(f"allocate+free with {many} live vs {few} live", a, b, "us", "<= 2x", a / b <= 2)


def copy_vs_ndarray(backend: Any = None, nbytes: int = 64 << 20) -> Ratio:
    src = np.arange(nbytes // 4, dtype="u4")
    buf = allocate(nbytes // 4, "u4", backend=backend)
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
    return Ratio("buf[:] = a vs ndarray copy, 64 MiB (GB/s)", ours_tp, ref_tp, "GB/s", ">= 0.9x",
                 ours_tp / ref_tp >= 0.9)


def syscalls_per_flush(backend: Any = None, flushes: int = 1000) -> Ratio:
    buf = allocate(4096, "u1", backend=backend)
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


def run_all(backend: Any = None, quick: bool = False,
            out: Optional[Callable[[str], None]] = print) -> List[Ratio]:
    results = [
        allocate_vs_empty(backend, 500 if quick else 2000),
        live_buffers_scaling(backend, 10_000 if quick else 100_000, 10, 500 if quick else 2000),
        copy_vs_ndarray(backend, (8 << 20) if quick else (64 << 20)),
        syscalls_per_flush(backend),
    ]
    if out is not None:
        for r in results:
            out(r.line())
    return results
