"""dma-buf export and import on the simulator's emulation of u-dma-buf's EXPORT ioctl.

What is emulated, from u-dma-buf v5.5.0's u-dma-buf.c (and the kernel's dma-buf core):
  * the ioctl (``U_DMA_BUF_IOCTL_EXPORT``, case at line 1788): the 40-byte argument read
    and written back whole (EFAULT when short), the descriptor's flags from bits 0..31
    of ``flags``; ``udmabuf_export_create_entry()`` (lines 1232-1261): EINVAL for an
    offset or size that is not page-aligned, for offset + size past the region's
    ``size`` and for flags other than O_CLOEXEC | O_SYNC | O_ACCMODE; ``addr`` =
    ``phys_addr + offset`` (line 1806); the access mode and O_CLOEXEC go to the new
    descriptor (``dma_buf_fd``), O_SYNC only to the export's mappings (``force_sync``);
  * the descriptor: a new open file of the region's memory (its pages, the same bytes
    every mapping of the region sees), sendable with ``socket.send_fds``, alive after
    the exporter closed its ``DmaBuf``, freed its buffer or ended; its
    ``/proc/self/fdinfo`` as ``dma_buf_show_fdinfo()`` adds to it: ``size``,
    ``exp_name`` (the device name, line 1308) and ``name`` once set. ``from_dmabuf``
    finds the region and block from exactly these lines on the simulator and on the
    driver (the backend's ``fdinfo``);
  * the dma-buf's own ioctls (``dma_buf_ioctl``): ``DMA_BUF_IOCTL_SYNC`` (EINVAL for
    flags outside READ | WRITE | END or neither READ nor WRITE; the driver's
    ``begin_cpu``/``end_cpu`` at lines 1121-1183 sync the export's whole range, as
    the simulator records), ``DMA_BUF_SET_NAME`` (at most 31 bytes: EINVAL), and
    ENOTTY for anything else, u-dma-buf's own requests included.

Not emulated: a mapping of the emulated descriptor starts at the region's first byte,
not the buffer's (``Simulator.dmabuf_file_offset`` says where the buffer is; the real
dma-buf maps from 0 and refuses a mapping past its size, checked in
tests/target/test_dmabuf.py); the fdinfo ``count`` line; caching.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
from pynq_alloc import (
    BufferFreedError,
    DriverInterfaceError,
    InvalidArgumentError,
    allocate,
    from_dmabuf,
)
from pynq_alloc.backends.sim import (
    DMA_BUF_IOCTL_SYNC,
    DMA_BUF_SET_NAME_B,
    SimRegion,
    Simulator,
)
from pynq_alloc.backends.udmabuf import UdmabufBackend
from pynq_alloc.pool import Pool

PAGE = mmap.PAGESIZE
REGION = SimRegion("udmabuf0", 8 << 20, 0x7E000000)
EXPORT = 0xC028550A
EXPORT_ARGS = struct.Struct("<QQQQi4x")


@pytest.fixture
def shared_sim() -> Iterator[Simulator]:
    """A simulator whose directory other processes open too (as $PYNQ_ALLOC_SIM_DIR does)."""
    with Simulator([REGION], record_syncs=True) as simulator:
        yield simulator


def fdinfo(backend: UdmabufBackend, fd: int) -> Dict[str, str]:
    return dict(line.split(":\t", 1) for line in backend.fdinfo(fd).splitlines())


def export_ioctl(sim: Simulator, fd: int, flags: int, size: int, offset: int) -> Any:
    return sim.ioctl(fd, EXPORT, EXPORT_ARGS.pack(flags, size, offset, 0, -1))


# -- a process on the other end of a socket (spawned: nothing inherited but the socket) ---
CHILD = r"""
import json, os, socket, sys
from pynq_alloc import allocate, from_dmabuf
from pynq_alloc.backends.sim import SimRegion, Simulator
root, mode, fd, region = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
sock = socket.socket(fileno=fd)
backend = Simulator([SimRegion(*region)], root=root).backend()
ledger = backend.handle(backend.region()).ledger
def say(fds=(), **fields):
    socket.send_fds(sock, [json.dumps(fields).encode()], list(fds))
def hear():
    data, fds, _, _ = socket.recv_fds(sock, 4096, 1)
    return json.loads(data or b"null"), fds
if mode == "import":
    order, fds = hear()
    try:
        buf = from_dmabuf(fds[0], (order["bytes"],), "u1", backend=backend)
    except Exception as exc:
        say(error=type(exc).__name__, message=str(exc))
        raise SystemExit(0)
    os.close(fds[0])  # the descriptor is no longer needed: the ledger holds the block
    first = int(buf[100])
    buf[:8] = order["value"]
    say(address=buf.device_address, first=first, slot=ledger.slot)
    hear()  # until told to let go (or killed)
    say(last=int(buf[-1]))
else:  # export
    buf = allocate(4096, "u1", backend=backend)
    buf[:] = 5
    dmabuf = buf.export()
    say([dmabuf.fd], address=buf.device_address, slot=ledger.slot)
    hear()
"""


class Peer:
    """A spawned interpreter running CHILD in ``mode``, reached through a socket pair."""

    def __init__(self, sim: Simulator, mode: str) -> None:
        self.sock, theirs = socket.socketpair()
        region = [REGION.name, REGION.size, REGION.phys_addr]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, sim.root, mode, str(theirs.fileno()),
             json.dumps(region)], pass_fds=[theirs.fileno()])
        theirs.close()

    def send(self, fds: Sequence[int] = (), **fields: Any) -> None:
        socket.send_fds(self.sock, [json.dumps(fields).encode()], list(fds))

    def receive(self) -> Any:
        self.sock.settimeout(120)
        data, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
        reply = json.loads(data)
        if fds:
            reply["fd"] = fds[0]
        return reply

    def end(self, kill: bool = False) -> int:
        if kill:
            self.proc.send_signal(signal.SIGKILL)
        self.sock.close()
        return self.proc.wait(timeout=120)


# -- the export itself ------------------------------------------------------------------------
def test_export_is_a_dma_buf_of_the_buffers_pages(backend: UdmabufBackend) -> None:
    first = allocate(100, "u1", backend=backend)  # the exported buffer is not at the start
    buf = allocate(5000, "u1", backend=backend)
    region = buf.region
    assert first.device_address == region.phys_addr
    with buf.export() as dmabuf:
        info = fdinfo(backend, dmabuf.fd)
        assert info["exp_name"] == region.name
        assert int(info["size"]) == dmabuf.size == 2 * PAGE
        assert dmabuf.device_address == buf.device_address == region.phys_addr + PAGE
        assert re.fullmatch(f"pa:{PAGE:x}:[0-9a-f]+:w", info["name"]), info["name"]
    buf.freebuffer()


def test_the_dma_buf_reaches_the_buffers_bytes_and_syncs_its_whole_range(
        sim: Simulator, backend: UdmabufBackend) -> None:
    first = allocate(3 * PAGE, "u1", backend=backend)
    buf = allocate(PAGE, "u1", backend=backend, cacheable=True)
    assert first.device_address == buf.region.phys_addr
    buf[:] = 0x11
    with buf.export() as dmabuf:
        start = sim.dmabuf_file_offset(dmabuf.fd)
        assert start == buf.device_address - buf.region.phys_addr == 3 * PAGE
        mm = mmap.mmap(dmabuf.fd, dmabuf.size, mmap.MAP_SHARED,
                       mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        view = np.frombuffer(mm, np.uint8)
        sim.clear_sync_requests()
        dmabuf.sync(start=True, write=False)
        assert (view == 0x11).all()
        view[:16] = 0x22
        dmabuf.sync(start=False, read=False)
        assert (buf[:16] == 0x22).all() and (buf[16:] == 0x11).all()
        del view
        mm.close()
    syncs = [(r.channel, r.attr, r.offset, r.size, r.direction) for r in sim.sync_requests()]
    assert syncs == [("dmabuf", "sync_for_cpu", 3 * PAGE, PAGE, 2),
                     ("dmabuf", "sync_for_device", 3 * PAGE, PAGE, 1)]
    buf.freebuffer()


def test_export_arguments_are_checked_as_the_driver_does(sim: Simulator,
                                                         backend: UdmabufBackend) -> None:
    fd = os.open(sim.device_path("udmabuf0"), os.O_RDWR)
    size = 16 << 20
    try:
        for flags, length, offset in ((os.O_RDWR, PAGE, 100), (os.O_RDWR, PAGE + 1, 0),
                                      (os.O_RDWR, 2 * PAGE, size - PAGE),
                                      (os.O_RDWR | os.O_APPEND, PAGE, 0)):
            with pytest.raises(OSError) as caught:
                export_ioctl(sim, fd, flags, length, offset)
            assert caught.value.errno == errno.EINVAL, (flags, length, offset)
        with pytest.raises(OSError) as caught:
            sim.ioctl(fd, EXPORT, bytes(32))  # shorter than the request's 40 bytes
        assert caught.value.errno == errno.EFAULT
        reply = export_ioctl(sim, fd, os.O_RDONLY | 0xAB << 32, PAGE, size - PAGE)
        flags, length, offset, address, dmabuf = EXPORT_ARGS.unpack(reply)
        assert (flags, length, offset, address) == (os.O_RDONLY | 0xAB << 32, PAGE,
                                                    size - PAGE, 0x7E000000 + size - PAGE)
        try:
            assert os.get_inheritable(dmabuf)  # no O_CLOEXEC asked
            with pytest.raises(PermissionError):  # opened read-only, as asked
                mmap.mmap(dmabuf, PAGE, mmap.MAP_SHARED, mmap.PROT_WRITE,
                          offset=size - PAGE)
            with pytest.raises(OSError) as caught:  # u-dma-buf's requests: not a dma-buf's
                sim.ioctl(dmabuf, 0x80085502, bytes(8))  # GET_SIZE
            assert caught.value.errno == errno.ENOTTY
            for bad in (0, 8, 4):  # no direction, unknown bit, END only
                with pytest.raises(OSError) as caught:
                    sim.ioctl(dmabuf, DMA_BUF_IOCTL_SYNC, struct.pack("<Q", bad))
                assert caught.value.errno == errno.EINVAL, bad
            with pytest.raises(OSError) as caught:
                sim.ioctl(dmabuf, DMA_BUF_SET_NAME_B, b"x" * 32 + b"\0")
            assert caught.value.errno == errno.EINVAL
            sim.ioctl(dmabuf, DMA_BUF_SET_NAME_B, b"x" * 31 + b"\0")
            assert fdinfo(backend, dmabuf)["name"] == "x" * 31
        finally:
            os.close(dmabuf)
        reply = export_ioctl(sim, fd, os.O_RDWR | os.O_CLOEXEC | os.O_SYNC, PAGE, 0)
        dmabuf = EXPORT_ARGS.unpack(reply)[4]
        assert not os.get_inheritable(dmabuf)
        entry = sim.dmabuf_of(dmabuf)
        assert entry is not None and entry.force_sync and entry.size == PAGE
        os.close(dmabuf)
    finally:
        os.close(fd)


def test_free_is_refused_while_an_export_is_open(backend: UdmabufBackend) -> None:
    buf = allocate(PAGE, "u1", backend=backend)
    ledger = backend.handle(buf.region).ledger
    dmabuf = buf.export()
    with pytest.raises(InvalidArgumentError, match="1 open dma-buf export"):
        buf.freebuffer()
    assert ledger.stats().used == PAGE and not buf.freed
    dmabuf.close()
    buf.freebuffer()
    assert ledger.stats().used == 0


# -- raw descriptors between processes --------------------------------------------------------
def test_another_process_imports_the_fd_at_the_same_address(shared_sim: Simulator) -> None:
    backend = shared_sim.backend()
    first = allocate(PAGE, "u1", backend=backend)
    buf = allocate(PAGE, "u1", backend=backend)
    buf[:] = 7
    peer = Peer(shared_sim, "import")
    with buf.export() as dmabuf:
        peer.send([dmabuf.fd], bytes=PAGE, value=9)
        got = peer.receive()
    assert (got["address"], got["first"]) == (buf.device_address, 7)
    peer.send()
    assert peer.receive() == {"last": 7}
    assert peer.end() == 0
    assert (buf[:8] == 9).all() and (buf[8:] == 7).all()  # written there, not in a copy
    buf.freebuffer()
    assert backend.handle(first.region).ledger.stats().used == PAGE  # `first` only


def test_an_importer_keeps_the_block_after_the_exporter_freed_it(shared_sim: Simulator) -> None:
    backend = shared_sim.backend()
    ledger = backend.handle(backend.region()).ledger
    buf = allocate(PAGE, "u1", backend=backend)
    address = buf.device_address
    peer = Peer(shared_sim, "import")
    dmabuf = buf.export()
    peer.send([dmabuf.fd], bytes=PAGE, value=3)
    child_slot = peer.receive()["slot"]
    dmabuf.close()
    buf.freebuffer()
    assert ledger.holders(0) == {child_slot: 1}
    fresh = allocate(PAGE, "u1", backend=backend)
    assert fresh.device_address != address, "a block held by an importer was handed out"
    peer.send()
    assert peer.receive() == {"last": 0}
    assert peer.end() == 0
    ledger.check()
    assert ledger.stats().used == PAGE  # only `fresh`: the importer's exit gave the block back


def test_a_descriptor_outlives_the_exporters_free_but_imports_no_more(
        shared_sim: Simulator) -> None:
    backend = shared_sim.backend()
    buf = allocate(PAGE, "u1", backend=backend)
    buf[:] = 4
    dmabuf = buf.export()
    raw = os.dup(dmabuf.fd)  # what a foreign importer would be left holding
    dmabuf.close()
    buf.freebuffer()
    peer = Peer(shared_sim, "import")
    peer.send([raw], bytes=PAGE, value=1)
    refused = peer.receive()
    assert refused["error"] == "BufferFreedError", refused
    assert peer.end() == 0
    # the kernel's reference still maps the memory (why a foreign importer must be done first)
    mm = mmap.mmap(raw, PAGE, offset=shared_sim.dmabuf_file_offset(raw))
    assert mm[:1] == b"\x04"
    mm.close()
    with pytest.raises(BufferFreedError):  # nor in the exporting process itself
        from_dmabuf(raw, PAGE, "u1", backend=backend)
    os.close(raw)


@pytest.mark.parametrize("killed", ["importer", "exporter"])
def test_sigkill_of_a_holder_leaves_the_pool_consistent(shared_sim: Simulator,
                                                        killed: str) -> None:
    backend = shared_sim.backend()
    ledger = backend.handle(backend.region()).ledger
    if killed == "importer":
        buf = allocate(PAGE, "u1", backend=backend)
        peer = Peer(shared_sim, "import")
        dmabuf = buf.export()
        peer.send([dmabuf.fd], bytes=PAGE, value=2)
        child_slot = peer.receive()["slot"]
        assert ledger.holders(0) == {ledger.slot: 1, child_slot: 1}
        assert peer.end(kill=True) == -signal.SIGKILL
        assert (buf[:8] == 2).all()
        dmabuf.close()
        buf.freebuffer()
    else:
        peer = Peer(shared_sim, "export")
        offer = peer.receive()
        imported = from_dmabuf(offer["fd"], PAGE, "u1", backend=backend)
        os.close(offer["fd"])
        assert imported.device_address == offer["address"]
        assert ledger.holders(0) == {offer["slot"]: 1, ledger.slot: 1}
        assert peer.end(kill=True) == -signal.SIGKILL
        assert (imported == 5).all()
        fresh = allocate(PAGE, "u1", backend=backend)
        assert fresh.device_address != imported.device_address
        assert ledger.holders(0) == {ledger.slot: 1}  # the dead exporter's hold reclaimed
        imported.freebuffer()
        fresh.freebuffer()
    ledger.check()
    assert ledger.stats().used == 0


def test_a_region_without_the_export_ioctl_says_to_use_share() -> None:
    with Simulator([SimRegion("udmabuf0", 1 << 20, 0x7E000000, export=False)]) as sim:
        _refused_export_keeps_the_growth(sim.backend())


def _refused_export_keeps_the_growth(backend: UdmabufBackend) -> None:
    buf = allocate(5000, "u1", backend=backend)
    with pytest.raises(DriverInterfaceError, match=r"cannot export dma-bufs.*buf\.share\(\)"):
        buf.export()
    ledger = backend.handle(buf.region).ledger
    assert ledger.live_blocks() == [(0, 8192, ledger.slot)]  # grown to whole pages, kept
    ledger.check()  # another process replaying the file sees the same growth
    del buf
    assert ledger.stats().used == 0


def test_export_refuses_a_last_page_shared_with_another_buffer(backend: UdmabufBackend) -> None:
    first = allocate(100, "u1", backend=backend)
    small = allocate(64, "u1", backend=backend, align=64)  # lands in first's last page
    assert small.device_address - first.device_address < 4096
    with pytest.raises(InvalidArgumentError, match="used by another buffer"):
        first.export()
    with pytest.raises(InvalidArgumentError, match="starts 128 bytes into a page"):
        small.export()
    backend.handle(first.region).ledger.check()


def test_import_refuses_what_is_not_our_dma_buf(tmp_path: Path,
                                                backend: UdmabufBackend) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(InvalidArgumentError, match="not a dma-buf"):
            from_dmabuf(fd, 16, "u1", backend=backend)
    finally:
        os.close(fd)
    with pytest.raises(InvalidArgumentError, match="not an open file descriptor"):
        from_dmabuf(fd, 16, "u1", backend=backend)
    with pytest.raises(InvalidArgumentError, match="not a file descriptor"):
        from_dmabuf("3", 16, "u1", backend=backend)


def test_pool_growth_takes_only_the_free_bytes_right_after_the_block() -> None:
    pool = Pool(1 << 16)
    a = pool.allocate(100, 4096)
    b = pool.allocate(64, 64)  # right after a's 128 bytes
    with pytest.raises(InvalidArgumentError, match="not free"):
        pool.grow(a, 4096)
    pool.release(b)
    assert pool.grow(a, 4096) == 128  # the free block it was carved from
    assert pool.block_size(a) == 4096
    pool.check()
    with pytest.raises(InvalidArgumentError, match="no allocated block"):
        pool.grow(8192, 4096)


def test_pool_growth_to_the_size_it_has_or_less_changes_nothing() -> None:
    """An export of a block already whole pages grows nothing, even when the block after
    it is in use (there is no free block to take from)."""
    pool = Pool(1 << 16)
    a = pool.allocate(4096, 4096)
    pool.allocate(4096, 4096)  # right after a
    before = sorted(pool.free_blocks())
    assert pool.grow(a, 4096) == 4096
    assert pool.grow(a, 64) == 4096
    assert pool.block_size(a) == 4096 and sorted(pool.free_blocks()) == before
    assert pool.stats().used == 8192
    pool.check()


def test_pool_growth_that_fills_the_free_block_after_leaves_no_empty_one() -> None:
    pool = Pool(1 << 16)
    a, b, c = (pool.allocate(4096, 4096) for _ in range(3))
    pool.release(b)  # free: exactly [4096, 8192), then [12288, 65536)
    assert pool.grow(a, 8192) == 4096
    assert pool.block_size(a) == 8192 and pool.stats().used == 8192 + 4096
    assert sorted(pool.free_blocks()) == [(12288, (1 << 16) - 12288)]
    pool.check()
    del c


def test_a_descriptor_of_another_simulator_names_the_shared_directory_fix(
        backend: UdmabufBackend) -> None:
    """A process that did not share PYNQ_ALLOC_SIM_DIR runs a simulator of its own: a
    descriptor the other one exported is named as such, with the fix."""
    buf = allocate(4096, "u1", backend=backend)
    refusal = pytest.raises(InvalidArgumentError,
                            match=r"exported by the simulator under .*PYNQ_ALLOC_SIM_DIR")
    with buf.export() as exported, Simulator() as other, refusal:
        from_dmabuf(exported.fileno(), (16,), "u1", backend=other.backend())
    buf.freebuffer()
