"""On-target figures of the QEMU run: each one a ratio of the library against a
reference measured side by side in the same guest, one line per figure:

  @@PYNQ-QEMU figure <name> | <ours> | <reference> | <unit> | <ratio>

- flush / invalidate of 4 KiB and 1 MiB (cacheable buffer) vs the same u-dma-buf
  call made bare: fcntl.ioctl(SET_SYNC_FOR_DEVICE / SET_SYNC_FOR_CPU) on the
  device with the encoded command, no library;
- flush / invalidate of 4 KiB and 1 MiB of an imported buffer (from_dmabuf of the
  buffer's own export) through the region (what Buffer.flush/invalidate do: the
  encoded SET_SYNC_FOR_DEVICE / SET_SYNC_FOR_CPU ioctl on /dev/<region>) vs the
  dma-buf's DMA_BUF_IOCTL_SYNC (END|WRITE / START|READ on the fd), which u-dma-buf
  turns into the same cache maintenance over the export's whole range;
- allocate+free of 4 KiB vs numpy.empty;
- copy of 1 MiB into and out of a cacheable buffer vs a write-combine one
  (allocate(..., cacheable=True) vs cacheable=False).

Under QEMU's TCG these are not hardware timings (TCG models no caches: the
cached/write-combine ratio says nothing about a board); ratios within one run
still show where the library adds cost.
"""
from __future__ import annotations

import fcntl
import gc
import os
import struct
import sys
import time
from typing import Any, Callable

import numpy as np
import pynq_alloc
from pynq_alloc.bench import best_of  # best per-call time in us, gc off: the bench's own loop

MARK = "@@PYNQ-QEMU"
SET_SYNC_FOR_CPU = 0x40085505
SET_SYNC_FOR_DEVICE = 0x40085506
TO_DEVICE, FROM_DEVICE = 1, 2


def interleaved_us(ours: Callable[[], Any], ref: Callable[[], Any], number: int,
                   repeat: int = 15) -> tuple:
    """Best time per call of each, their batches alternating, so that a load change on
    the host (other guests, TCG) falls on both sides alike."""
    best = [float("inf"), float("inf")]
    gc.disable()
    try:
        for _ in range(repeat):
            for side, fn in enumerate((ours, ref)):
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                best[side] = min(best[side], (time.perf_counter() - t0) / number)
    finally:
        gc.enable()
    return best[0] * 1e6, best[1] * 1e6


def figure(name: str, ours: float, ref: float, unit: str) -> None:
    ratio = ours / ref if ref else float("inf")
    print(f"{MARK} figure {name} | {ours:.2f} | {ref:.2f} | {unit} | {ratio:.2f}", flush=True)


def encoded(offset: int, size: int, direction: int) -> bytes:
    return struct.pack("Q", (offset << 32) | (size & 0xFFFFFFF0) | (direction << 2) | 1)


def sync_figures(region: Any) -> None:
    fd = os.open(region.device_path, os.O_RDWR | os.O_CLOEXEC)
    try:
        for nbytes, label, number in ((4096, "4 KiB", 300), (1 << 20, "1 MiB", 30)):
            buf = pynq_alloc.allocate(nbytes, "u1", target=region.name, cacheable=True)
            try:
                offset = buf.device_address - region.phys_addr
                buf.flush()  # opens the library's sync channel outside the timing
                to_dev, from_dev = encoded(offset, nbytes, TO_DEVICE), encoded(
                    offset, nbytes, FROM_DEVICE)
                figure(f"flush {label} vs bare ioctl", best_of(buf.flush, number),
                       best_of(lambda c=to_dev: fcntl.ioctl(fd, SET_SYNC_FOR_DEVICE, c),
                               number), "us")
                figure(f"invalidate {label} vs bare ioctl", best_of(buf.invalidate, number),
                       best_of(lambda c=from_dev: fcntl.ioctl(fd, SET_SYNC_FOR_CPU, c),
                               number), "us")
            finally:
                buf.freebuffer()
    finally:
        os.close(fd)


DMA_BUF_IOCTL_SYNC = 0x40086200
DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_END = 1, 2, 4


def import_sync_figures(region: Any) -> None:
    if region.ioctl_version < 2:
        print(f"{MARK} info no import sync figures: u-dma-buf {region.driver_version} "
              f"has no export ioctl", flush=True)
        return
    for nbytes, label, number in ((4096, "4 KiB", 300), (1 << 20, "1 MiB", 30)):
        buf = pynq_alloc.allocate(nbytes, "u1", target=region.name, cacheable=True)
        dmabuf = buf.export()
        imported = pynq_alloc.from_dmabuf(dmabuf.fd, (nbytes,), "u1")
        try:
            fd = dmabuf.fd
            end_write = struct.pack("Q", DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE)
            start_read = struct.pack("Q", DMA_BUF_SYNC_READ)
            imported.flush()
            dev = os.open(region.device_path, os.O_RDWR | os.O_CLOEXEC)
            offset = imported.device_address - region.phys_addr
            to_dev = encoded(offset, nbytes, TO_DEVICE)
            from_dev = encoded(offset, nbytes, FROM_DEVICE)
            try:
                # (what, the library's call, the bare region ioctl, DMA_BUF_IOCTL_SYNC's flags)
                for what, ours, request, command, flags in (
                        ("flush", imported.flush, SET_SYNC_FOR_DEVICE, to_dev, end_write),
                        ("invalidate", imported.invalidate, SET_SYNC_FOR_CPU, from_dev,
                         start_read)):
                    def bare_dmabuf(flags: bytes = flags) -> None:
                        fcntl.ioctl(fd, DMA_BUF_IOCTL_SYNC, flags)

                    def bare_region(request: int = request, command: bytes = command) -> None:
                        fcntl.ioctl(dev, request, command)
                    figure(f"imported {what} {label}: Buffer.{what} vs bare DMA_BUF_IOCTL_SYNC",
                           *interleaved_us(ours, bare_dmabuf, number), "us")
                    figure(f"imported {what} {label}: bare region ioctl vs bare "
                           f"DMA_BUF_IOCTL_SYNC",
                           *interleaved_us(bare_region, bare_dmabuf, number), "us")
            finally:
                os.close(dev)
        finally:
            imported.freebuffer()
            dmabuf.close()
            buf.freebuffer()


def allocate_figure(region: Any) -> None:
    def ours() -> None:
        pynq_alloc.allocate(1024, "u4", target=region.name).freebuffer()

    figure("allocate+free 4 KiB vs numpy.empty", best_of(ours, 200),
           best_of(lambda: np.empty(1024, "u4"), 200), "us")


def copy_figures(region: Any) -> None:
    nbytes = 1 << 20
    src = np.arange(nbytes // 4, dtype="u4")
    out = np.empty_like(src)
    cached = pynq_alloc.allocate(nbytes // 4, "u4", target=region.name, cacheable=True)
    wc = pynq_alloc.allocate(nbytes // 4, "u4", target=region.name, cacheable=False)
    try:
        cached[:] = src  # first touch outside the timing
        wc[:] = src

        def into(buf: Any) -> Callable[[], None]:
            def fn() -> None:
                buf[:] = src
            return fn

        def out_of(buf: Any) -> Callable[[], None]:
            def fn() -> None:
                out[:] = buf
            return fn

        def mb_s(fn: Callable[[], None]) -> float:
            return nbytes / best_of(fn, 10, 5)  # bytes per microsecond = MB/s

        figure("copy 1 MiB into: cacheable vs write-combine (MB/s)",
               mb_s(into(cached)), mb_s(into(wc)), "MB/s")
        figure("copy 1 MiB out of: cacheable vs write-combine (MB/s)",
               mb_s(out_of(cached)), mb_s(out_of(wc)), "MB/s")
    finally:
        cached.freebuffer()
        wc.freebuffer()


def main() -> int:
    found = pynq_alloc.regions(backend="udmabuf")
    region = max(found, key=lambda r: r.size)
    print(f"{MARK} info figures on {region.name} ({region.size} bytes, sync_mode "
          f"{region.sync_mode}, coherent {region.coherent})", flush=True)
    sync_figures(region)
    import_sync_figures(region)
    allocate_figure(region)
    copy_figures(region)
    return 0


if __name__ == "__main__":
    sys.exit(main())
