"""Data and caches: what a Buffer holds after flush() is what the memory holds,
seen through mappings that bypass the CPU cache (an O_SYNC mapping of the
device, /dev/mem for a no-map carve-out); invalidate() shows what was written
behind the cache; a view syncs only its own bytes; cacheable=False maps the
region uncached and survives what numpy does to memory."""
from __future__ import annotations

import fcntl
import os
import struct
from typing import Any, List, Tuple

import numpy as np
import pynq_alloc
import pytest
from helpers import (
    DEV_ROOT,
    IOCTL_SET_SYNC_FOR_CPU,
    IOCTL_SET_SYNC_FOR_DEVICE,
    SYSFS_CLASS,
    Window,
    decode_sync_command,
    in_child,
    reserved_pool,
    sysfs,
)

WORDS = 2048  # 16 KiB: several pages, many cache lines


def pattern(seed: int, n: int = WORDS) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 63, size=n, dtype=np.uint64)


def device_window(region: Any, buf: Any) -> Window:
    """/dev/<region> opened with O_SYNC: not through the CPU cache."""
    return Window(str(DEV_ROOT / region.name), 0, buf.device_address - region.phys_addr,
                  buf.nbytes)


def devmem_window(region: Any, buf: Any) -> Window:
    pool = reserved_pool(region.name)
    if pool is None or not pool.no_map:
        pytest.skip(f"{region.name} is not a no-map carve-out: /dev/mem maps only those "
                    f"(STRICT_DEVMEM refuses RAM and CMA)")
    return Window("/dev/mem", region.phys_addr, buf.device_address - region.phys_addr, buf.nbytes)


WINDOWS = {"device-o_sync": device_window, "dev-mem": devmem_window}


@pytest.mark.parametrize("reader", sorted(WINDOWS))
def test_flushed_data_is_what_the_region_holds(region: Any, reader: str) -> None:
    data = pattern(1)
    with pynq_alloc.allocate(WORDS, "u8", target=region.name, cacheable=True) as buf:
        buf[:] = data
        buf.flush()
        with WINDOWS[reader](region, buf) as window:
            assert window.read_words() == data.tolist()


@pytest.mark.parametrize("writer", sorted(WINDOWS))
def test_invalidate_shows_what_was_written_behind_the_cache(region: Any, writer: str) -> None:
    old, new = pattern(2), pattern(3)
    with pynq_alloc.allocate(WORDS, "u8", target=region.name, cacheable=True) as buf:
        buf[:] = old
        buf.flush()
        # the CPU reads one word of every line (u8 x 8 = 64 bytes): lines of `old` may be
        # cached now, and what it reads is what it wrote
        assert np.array_equal(buf[::8], old[::8])
        with WINDOWS[writer](region, buf) as window:  # "the device" writes
            window.write_words(new.tolist())
        buf.invalidate()
        assert np.array_equal(buf, new)


def test_flush_and_invalidate_hand_the_memory_to_the_device_and_back(region: Any) -> None:
    if region.coherent:
        pytest.skip(f"{region.name} is dma-coherent: there is no cache maintenance to observe")
    with pynq_alloc.allocate(WORDS, "u8", target=region.name, cacheable=True) as buf:
        buf[:] = 5
        buf.flush()
        assert sysfs(region.name, "sync_owner") == "1"  # the driver's sync_for_device ran
        buf.invalidate()
        assert sysfs(region.name, "sync_owner") == "0"  # ... and its sync_for_cpu


@pytest.fixture
def sync_ioctls(monkeypatch: pytest.MonkeyPatch) -> List[Tuple[int, int]]:
    """Every u-dma-buf sync ioctl this process issues, as (request, command);
    each still goes to the driver."""
    calls: List[Tuple[int, int]] = []
    real = fcntl.ioctl

    def spy(fd: int, request: int, arg: Any = 0, *rest: Any) -> Any:
        if request in (IOCTL_SET_SYNC_FOR_CPU, IOCTL_SET_SYNC_FOR_DEVICE):
            cmd = arg if isinstance(arg, int) else struct.unpack("<Q", bytes(arg)[:8])[0]
            calls.append((request, cmd))
        return real(fd, request, arg, *rest)

    monkeypatch.setattr(fcntl, "ioctl", spy)
    return calls


@pytest.mark.parametrize("squeezed", [False, True], ids=["slice", "squeezed"])
@pytest.mark.parametrize("span", [(1000, 1500), (3, 4), (0, 4096)], ids=str)
def test_a_view_syncs_exactly_its_own_bytes(region: Any, sync_ioctls: List[Tuple[int, int]],
                                            span: Tuple[int, int], squeezed: bool) -> None:
    if region.coherent:
        pytest.skip(f"{region.name} is dma-coherent: flush/invalidate issue nothing")
    if region.ioctl_version < 2:
        pytest.skip(f"u-dma-buf {region.driver_version} has no sync ioctls (sysfs fallback)")
    with pynq_alloc.allocate(4096, "u4", target=region.name, cacheable=True) as buf:
        view = buf[span[0]:span[1]]
        if squeezed:  # numpy makes this view itself and hands it to __array_wrap__
            view = view.reshape(1, -1).squeeze()
        first = view.device_address - region.phys_addr
        last = first + view.nbytes
        for method, request, direction, owner in (
                (view.flush, IOCTL_SET_SYNC_FOR_DEVICE, 1, "1"),
                (view.invalidate, IOCTL_SET_SYNC_FOR_CPU, 2, "0")):
            sync_ioctls.clear()
            method()
            assert [r for r, _ in sync_ioctls] == [request], "one ioctl per call"
            offset, size, got_direction = decode_sync_command(sync_ioctls[0][1])
            assert got_direction == direction
            # [first, last) rounded out to whole cache lines (64 bytes), no more.
            assert offset <= first < offset + 64, (hex(offset), hex(first))
            assert last <= offset + size < last + 64 + 16, (hex(offset + size), hex(last))
            assert sysfs(region.name, "sync_owner") == owner  # the driver did it


def map_uncached_and_use_like_numpy(name: str) -> dict:
    """In a child: allocate with cacheable=False, watching how the device is
    opened, then do to the memory what numpy and glibc do."""
    opens: List[Tuple[str, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, *rest: Any, **kw: Any) -> int:
        opens.append((str(path), flags))
        return real_open(path, flags, *rest, **kw)

    os.open = spy  # type: ignore[assignment]
    try:
        buf = pynq_alloc.allocate(8192, "u1", target=name, cacheable=False)
    except pynq_alloc.InvalidArgumentError as exc:
        return {"refused": str(exc)}
    finally:
        os.open = real_open  # type: ignore[assignment]
    device = str(DEV_ROOT / name)
    o_sync = [bool(flags & os.O_SYNC) for path, flags in opens if path == device]
    # memset (glibc's DC ZVA), unaligned loads and stores, copies at odd offsets.
    buf[:] = 0
    buf.fill(0x5A)
    unaligned = buf[1:1 + 4 * 1000].view("u4")
    total = int(unaligned.sum())
    np.copyto(buf[3:3 + 1000], np.arange(1000, dtype="u1"))
    unaligned[7] = 0x01020304
    return {"cacheable": buf.cacheable, "o_sync": o_sync, "total": total,
            "head": buf[:16].tolist()}


def test_cacheable_false_maps_uncached_and_survives_numpy(region: Any) -> None:
    # In a child: its own first uncached mapping is made in front of the spy, and
    # a fault on Device memory (SIGBUS) fails this test instead of the suite.
    got = in_child(map_uncached_and_use_like_numpy, region.name)
    if "refused" in got:
        # sync_mode 1 + O_SYNC would be Device-nGnRnE memory: a clear refusal is right.
        assert region.sync_mode in (0, 1, 4, 5), got
        assert "sync" in got["refused"]
        return
    assert got["cacheable"] is False
    assert got["o_sync"] and all(got["o_sync"]), f"device opened without O_SYNC: {got}"
    assert got["total"] == 1000 * 0x5A5A5A5A
    expected = np.full(16, 0x5A, np.uint8)
    expected[3:16] = np.arange(13)
    assert got["head"] == expected.tolist()


def test_uncached_writes_reach_memory_without_flush(region: Any) -> None:
    try:
        buf = pynq_alloc.allocate(WORDS, "u8", target=region.name, cacheable=False)
    except pynq_alloc.InvalidArgumentError as exc:
        pytest.skip(f"cacheable=False refused on {region.name}: {exc}")
    try:
        data = pattern(4)
        buf[:] = data
        with device_window(region, buf) as window:
            assert window.read_words() == data.tolist()
    finally:
        buf.freebuffer()


def allocate_uncached(name: str) -> dict:
    try:
        pynq_alloc.allocate(4096, "u1", target=name, cacheable=False)
    except pynq_alloc.PynqAllocError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}


def test_cacheable_false_is_refused_where_it_would_map_device_memory(region: Any) -> None:
    """sync_mode 1 + O_SYNC maps Device-nGnRnE memory, where numpy's unaligned
    accesses and glibc's DC ZVA memset fault on arm: the package must say so
    instead of handing numpy such memory. (Sets sync_mode to 1 for the test.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test changes the region's sync_mode")
    saved = sysfs(region.name, "sync_mode")
    mode_file = str(SYSFS_CLASS / region.name / "sync_mode")
    try:
        with open(mode_file, "w") as f:
            f.write("1\n")
        got = in_child(allocate_uncached, region.name)  # a child maps afresh
    finally:
        with open(mode_file, "w") as f:
            f.write(saved + "\n")
    assert got["error"] == "InvalidArgumentError", got
    assert "sync-mode" in got["message"] or "sync_mode" in got["message"]
