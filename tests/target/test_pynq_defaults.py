"""PYNQ's defaults on the real driver: allocate() maps write-combine unless asked for
cacheable=True, and a fresh buffer reads zero whoever used its memory before.

QEMU (TCG) models no CPU cache, so "visible without flush" proves nothing there:
these tests check the kind of mapping instead (the device descriptor's O_SYNC in
/proc/self/fdinfo, the region's sync_mode), and read reused memory through an
independent mapping of the region."""
from __future__ import annotations

import os
from typing import Any, List

import numpy as np
import pynq_alloc
import pytest
from helpers import DEV_ROOT, Window, in_child, reserved_pool, sysfs

# O_SYNC is __O_SYNC | O_DSYNC; the first bit is the one only O_SYNC sets.
O_SYNC_ONLY = os.O_SYNC & ~os.O_DSYNC


def _fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"/proc/self/fdinfo/{fd} has no flags line")


def open_flags_of_a_new_buffer(name: str, cacheable: Any) -> dict:
    """In a child (its own first mapping): the kernel's open flags, from fdinfo, of the
    descriptors of /dev/<name> that allocate() opened (found by watching os.open: the
    numbers of the parent's descriptors, closed in the child, are reused)."""
    device = str(DEV_ROOT / name)
    opened: List[int] = []
    real_open = os.open

    def spy(path: Any, flags: int, *rest: Any, **kw: Any) -> int:
        fd = real_open(path, flags, *rest, **kw)
        if str(path) == device:
            opened.append(fd)
        return fd

    os.open = spy  # type: ignore[assignment]
    try:
        kwargs = {} if cacheable is None else {"cacheable": cacheable}
        buf = pynq_alloc.allocate(4096, "u1", target=name, **kwargs)
    finally:
        os.open = real_open  # type: ignore[assignment]
    flags = [_fd_flags(fd) for fd in opened]
    return {"flags": flags, "cacheable": buf.cacheable, "coherent": buf.coherent}


def test_a_default_buffer_is_the_drivers_write_combine_mapping(region: Any) -> None:
    got = in_child(open_flags_of_a_new_buffer, region.name, None)
    assert got["flags"], f"no new descriptor of /dev/{region.name}: {got}"
    if region.coherent:
        # dma-coherent: the device snoops the caches; the cached mapping needs no flush.
        assert got["cacheable"] is True and got["coherent"] is True
        assert not any(f & O_SYNC_ONLY for f in got["flags"]), got
        return
    assert sysfs(region.name, "sync_mode") in ("2", "3"), (
        f"{region.name}: sync_mode {sysfs(region.name, 'sync_mode')} gives no write-combine "
        f"mapping; the layer's udev rule and device tree set 2")
    assert got["cacheable"] is False
    assert all(f & O_SYNC_ONLY for f in got["flags"]), [oct(f) for f in got["flags"]]


def test_a_cacheable_buffer_is_the_cached_mapping(region: Any) -> None:
    got = in_child(open_flags_of_a_new_buffer, region.name, True)
    assert got["flags"] and got["cacheable"] is True
    assert not any(f & O_SYNC_ONLY for f in got["flags"]), [oct(f) for f in got["flags"]]


def _windows(region: Any, buf: Any) -> List[Window]:
    offset = buf.device_address - region.phys_addr
    windows = [Window(str(DEV_ROOT / region.name), 0, offset, buf.nbytes)]
    pool = reserved_pool(region.name)
    if pool is not None and pool.no_map:
        windows.append(Window("/dev/mem", region.phys_addr, offset, buf.nbytes))
    return windows


@pytest.mark.parametrize("cacheable", [False, True], ids=["write-combine", "cached"])
def test_a_reused_block_reads_zero_to_the_cpu_and_through_another_mapping(
        region: Any, cacheable: bool) -> None:
    size = 64 << 10
    old = pynq_alloc.allocate(size, "u1", target=region.name, cacheable=cacheable)
    address = old.device_address
    old[:] = 0xEE
    old.flush()
    old.freebuffer()
    buf = pynq_alloc.allocate(size, "u1", target=region.name, cacheable=cacheable)
    try:
        assert buf.device_address == address, "the freed block was not the one reused"
        assert not np.asarray(buf).any(), "the CPU sees the previous buffer's data"
        for window in _windows(region, buf):
            with window:
                assert not any(window.read_words()), "memory still holds the old data"
    finally:
        buf.freebuffer()
