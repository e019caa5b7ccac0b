"""The board's sync path on the host: flush/invalidate go to the driver as one encoded
SET_SYNC_FOR_DEVICE / SET_SYNC_FOR_CPU ioctl each, and to the sysfs files only where the
driver has no such ioctl.

The simulator answers the ioctls as u-dma-buf's ``udmabuf_device_file_ioctl()`` does
(see pynq_alloc.backends.sim). The request numbers expected here are computed from the
driver header's definitions, ``_IOW('U', 5, uint64_t)`` and ``_IOW('U', 6, uint64_t)``,
with the kernel's ``_IOC`` layout, never taken from the package under test.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import pytest
from pynq_alloc import SyncError, allocate
from pynq_alloc.backends.sim import SimRegion, Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend

BASE = 0x7E000000


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """include/uapi/asm-generic/ioctl.h: nr 0..7, type 8..15, size 16..29, dir 30..31."""
    return direction << 30 | size << 16 | ord(kind) << 8 | nr


def _iow(kind: str, nr: int, size: int) -> int:
    return _ioc(1, kind, nr, size)  # _IOC_WRITE


def _ior(kind: str, nr: int, size: int) -> int:
    return _ioc(2, kind, nr, size)  # _IOC_READ


SET_SYNC_FOR_CPU = _iow("U", 5, 8)
SET_SYNC_FOR_DEVICE = _iow("U", 6, 8)


def encoded(offset: int, size: int, direction: int) -> int:
    """The driver's one-shot command, from its documentation: offset in bits 63..32,
    size in 31..4, direction in 3..2, bit 0 set."""
    return offset << 32 | size | direction << 2 | 1


def test_the_request_numbers_are_the_driver_header_s() -> None:
    assert (SET_SYNC_FOR_CPU, SET_SYNC_FOR_DEVICE) == (0x40085505, 0x40085506)  # UDMABUF.md


def test_flush_is_one_set_sync_for_device_ioctl(sim: Simulator, backend: UdmabufBackend) -> None:
    buf = allocate(1000, "u1", cacheable=True, backend=backend)
    part = buf[100:300]
    sim.clear_sync_requests()
    part.flush()
    assert [(c.request, c.errno) for c in sim.ioctl_calls()] == [(SET_SYNC_FOR_DEVICE, 0)]
    (request,) = sim.sync_requests()
    start = buf.device_address - BASE + 64
    assert (request.channel, request.request, request.raw) == (
        "ioctl", SET_SYNC_FOR_DEVICE, hex(encoded(start, 256, 1)))
    assert (request.offset, request.size, request.direction, request.valid) == (start, 256, 1, True)


def test_invalidate_is_one_set_sync_for_cpu_ioctl(sim: Simulator, backend: UdmabufBackend) -> None:
    buf = allocate(1000, "u1", cacheable=True, backend=backend)
    sim.clear_sync_requests()
    buf.invalidate()
    assert [(c.request, c.errno) for c in sim.ioctl_calls()] == [(SET_SYNC_FOR_CPU, 0)]
    (request,) = sim.sync_requests()
    start = buf.device_address - BASE
    assert (request.channel, request.request, request.raw) == (
        "ioctl", SET_SYNC_FOR_CPU, hex(encoded(start, 1024, 2)))


def test_a_forked_child_syncs_through_the_ioctl_too(sim: Simulator,
                                                    backend: UdmabufBackend) -> None:
    buf = allocate(64, "u1", cacheable=True, backend=backend)
    sim.clear_sync_requests()
    pid = os.fork()
    if pid == 0:
        try:
            buf.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert [(r.channel, r.request, r.offset) for r in sim.sync_requests()] == [
        ("ioctl", SET_SYNC_FOR_DEVICE, buf.device_address - BASE)]


@pytest.mark.parametrize("request_number, why", [
    (_iow("U", 6, 4), "size 4 instead of 8"),
    (_ior("U", 6, 8), "read instead of write"),
    (_iow("V", 6, 8), "another driver's type"),
    (_iow("U", 11, 8), "a number the driver does not have"),
    (_ioc(3, "U", 10, 32), "EXPORT with a 32-byte argument instead of 40"),
])
def test_requests_the_driver_does_not_know_are_enotty(
        sim: Simulator, backend: UdmabufBackend, request_number: int, why: str) -> None:
    allocate(64, "u1", cacheable=True, backend=backend)
    sim.clear_sync_requests()  # the fresh block's zero-fill clean
    fd = backend.handle(backend.region()).device_fd()
    with pytest.raises(OSError) as info:
        backend.ioctl(fd, request_number, struct.pack("<Q", encoded(0, 64, 1)))
    assert info.value.errno == errno.ENOTTY, why
    assert sim.sync_requests() == []


def test_out_of_range_syncs_are_einval_and_bad_pointers_efault(
        sim: Simulator, backend: UdmabufBackend) -> None:
    allocate(64, "u1", cacheable=True, backend=backend)
    sim.clear_sync_requests()  # the fresh block's zero-fill clean
    fd = backend.handle(backend.region()).device_fd()
    size = 16 << 20
    for command in (encoded(size - 64, 128, 1), encoded(size, 16, 2)):
        with pytest.raises(OSError) as info:
            backend.ioctl(fd, SET_SYNC_FOR_DEVICE, struct.pack("<Q", command))
        assert info.value.errno == errno.EINVAL
    backend.ioctl(fd, SET_SYNC_FOR_DEVICE, struct.pack("<Q", encoded(size - 64, 64, 1)))
    for arg in (0x1234, b"\x01\x00"):
        with pytest.raises(OSError) as info:
            backend.ioctl(fd, SET_SYNC_FOR_CPU, arg)  # type: ignore[arg-type]
        assert info.value.errno == errno.EFAULT
    assert [r.valid for r in sim.sync_requests()] == [False, False, True]


def test_the_read_ioctls_report_the_region(sim: Simulator, backend: UdmabufBackend) -> None:
    allocate(64, "u1", cacheable=True, backend=backend)
    fd = backend.handle(backend.region()).device_fd()
    flags, version = struct.unpack("<Q16s", backend.ioctl(fd, _ior("U", 1, 24), bytes(24)))
    assert flags & 0xFF == 2 and version.rstrip(b"\0") == b"5.5.0"
    assert struct.unpack("<Q", backend.ioctl(fd, _ior("U", 2, 8), bytes(8)))[0] == 16 << 20
    assert struct.unpack("<Q", backend.ioctl(fd, _ior("U", 3, 8), bytes(8)))[0] == BASE
    dev_flags, dev_size, dev_addr = struct.unpack("<QQQ",
                                                  backend.ioctl(fd, _ior("U", 7, 24), bytes(24)))
    assert (dev_flags >> 9 & 1, dev_size, dev_addr) == (0, 16 << 20, BASE)


def test_an_out_of_range_sync_reaches_the_caller_as_a_sync_error() -> None:
    """A driver that refuses the range makes the sync raise SyncError naming the
    command, never pass silently. (Here sysfs and the device file claim 2 MiB while the
    driver's own size is 1 MiB; the error may come from allocate() itself, where a
    fresh block is synced, or from the flush.)"""
    with Simulator([SimRegion("udmabuf0", 1 << 20, BASE)], record_syncs=True) as sim:
        sim.write_attr("udmabuf0", "size", f"{2 << 20}\n")
        os.truncate(sim.device_path("udmabuf0"), 2 << 20)
        backend = sim.backend()
        inside = allocate(4096, "u1", cacheable=True, align=1 << 20, backend=backend)
        with pytest.raises(SyncError, match=r"0x0010000000001005.*inside the region"):
            beyond = allocate(4096, "u1", cacheable=True, align=1 << 20, backend=backend)
            assert beyond.device_address - BASE == 1 << 20  # past the device's real end
            beyond.flush()
        sim.clear_sync_requests()
        inside.flush()
        assert [(r.offset, r.valid) for r in sim.sync_requests()] == [(0, True)]
        assert [c.errno for c in sim.ioctl_calls()] == [0]


@pytest.mark.parametrize("region, attempts", [
    (SimRegion("udmabuf0", 1 << 20, BASE, driver_version="4.2.0", ioctl_version=0), 0),
    (SimRegion("udmabuf0", 1 << 20, BASE, ioctl_version=1), 0),
    (SimRegion("udmabuf0", 1 << 20, BASE, ioctls=False), 1),
], ids=["no ioctls (version 0)", "ioctl_version 1", "device answers ENOTTY"])
def test_without_the_sync_ioctl_flushes_go_through_sysfs(region: SimRegion,
                                                         attempts: int) -> None:
    """Old drivers (ioctl_version < 2) are synced through sync_for_*; a device that
    answers ENOTTY is tried once, then sysfs is used from then on."""
    with Simulator([region], record_syncs=True) as sim:
        buf = allocate(100, "u1", cacheable=True, backend=sim.backend())
        # The fresh block's zero-fill clean is the first sync: the one ioctl attempt.
        assert [(c.request, c.errno) for c in sim.ioctl_calls()] == [
            (SET_SYNC_FOR_DEVICE, errno.ENOTTY)] * attempts
        # ...and the clean still reaches the driver, through sysfs (ENOTTY loses nothing)
        assert [(r.channel, r.attr, r.offset, r.size, r.direction) for r in sim.sync_requests()
                if r.channel == "sysfs"] == [
            ("sysfs", "sync_for_device", buf.device_address - BASE, 128, 1)]
        sim.clear_sync_requests()
        for _ in range(3):
            buf.flush()
        assert sim.ioctl_calls() == []
        assert [(r.channel, r.attr, r.offset, r.size, r.direction, r.valid)
                for r in sim.sync_requests()] == [
            ("sysfs", "sync_for_device", buf.device_address - BASE, 128, 1, True)] * 3
        sim.clear_sync_requests()
        buf.invalidate()
        assert sim.ioctl_calls() == []
        assert [(r.channel, r.attr, r.offset, r.size, r.direction, r.valid)
                for r in sim.sync_requests()] == [
            ("sysfs", "sync_for_cpu", buf.device_address - BASE, 128, 2, True)]


def descriptors_of(paths: list) -> list:
    """This process's open descriptors of any of ``paths`` (from /proc/self/fd)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") in paths:
                found.append(int(name))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return found


def test_the_sysfs_fallback_opens_each_sync_file_once_blocking_and_close_on_exec() -> None:
    """One descriptor per sync file for the life of the handle (not one per flush),
    none leaks into programs this process starts, and writes to it block: O_NONBLOCK is
    for the open only (a sysfs write never blocks, but the simulator's FIFO is full
    when a burst of syncs outruns its reader, and a non-blocking write would then fail
    with EAGAIN, now and then: the verdict of such a test would depend on the load)."""
    with Simulator([SimRegion("udmabuf0", 1 << 20, BASE, ioctl_version=0)],
                   record_syncs=True) as sim:
        paths = [sim.attr_path("udmabuf0", a) for a in ("sync_for_device", "sync_for_cpu")]
        simulators = set(descriptors_of(paths))  # the recorder's own ends of the FIFOs
        buf = allocate(100, "u1", cacheable=True, backend=sim.backend())
        for _ in range(20):
            buf.flush()
            buf.invalidate()
        mine = set(descriptors_of(paths)) - simulators
        assert len(mine) == 2
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in mine)
        assert not any(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK for fd in mine)


@pytest.mark.parametrize("region", [
    SimRegion("udmabuf0", 1 << 20, BASE),
    SimRegion("udmabuf0", 1 << 20, BASE, ioctl_version=0),
], ids=["ioctl", "sysfs"])
def test_the_sync_call_counter_counts_what_the_driver_received(region: SimRegion) -> None:
    """handle.sync_calls (read by the benchmark) is the number of system calls the
    driver saw, from the handle's start."""
    with Simulator([region], record_syncs=True) as sim:
        backend = sim.backend()
        buf = allocate(100, "u1", cacheable=True, backend=backend)
        for _ in range(3):
            buf.flush()
        buf[:10].invalidate()
        received = len(sim.sync_requests())
        assert received >= 4
        assert backend.handle(buf.region).sync_calls == received


def test_a_sync_past_2_gib_is_two_ioctls_and_covers_everything() -> None:
    """One command's size field holds less than 4 GiB, so the backend splits at 2 GiB;
    every part must reach the driver (the region file is sparse: nothing is written)."""
    with Simulator([SimRegion("udmabuf0", 4 << 30, 0x1_0000_0000)], record_syncs=True) as sim:
        backend = sim.backend()
        handle = backend.handle(backend.region())
        handle.sync(64, 3 << 30, 1)
        assert [(c.request, c.errno) for c in sim.ioctl_calls()] == [(SET_SYNC_FOR_DEVICE, 0)] * 2
        assert [(r.offset, r.size) for r in sim.sync_requests()] == [
            (64, 2 << 30), (64 + (2 << 30), 1 << 30)]
        handle.close()


def test_a_region_is_mapped_once_per_process(backend: UdmabufBackend) -> None:
    """Buffers of one region share one mapping: their virtual addresses are as far apart
    as their device addresses."""
    first = allocate(100, "u1", cacheable=True, backend=backend)
    second = allocate(100, "u1", cacheable=True, backend=backend)
    assert second.device_address != first.device_address
    assert (second.virtual_address - first.virtual_address
            == second.device_address - first.device_address)
    assert backend.handle(first.region) is backend.handle(second.region)
