"""One pool shared by every process: disjoint blocks, dead owners reclaimed, fork rules."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import pytest
from as_user import in_forked_child
from churn import churn_until
from pynq_alloc import LedgerError, allocate
from pynq_alloc import ledger as ledger_module
from pynq_alloc.backends.sim import Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend

CHILD = textwrap.dedent("""
    import sys, time
    from pynq_alloc import allocate
    from pynq_alloc.backends.udmabuf import UdmabufBackend
    backend = UdmabufBackend(*sys.argv[1:4])
    bufs = [allocate(int(sys.argv[4]), "u1", backend=backend) for _ in range(int(sys.argv[5]))]
    print(" ".join(hex(b.device_address) for b in bufs), flush=True)
    if sys.argv[6] == "eof":  # hold until the parent closes our stdin
        sys.stdin.read()
    else:
        time.sleep(float(sys.argv[6]))
""")


def spawn(sim: Simulator, size: int, count: int, hold: float | str) -> subprocess.Popen:
    """A child that allocates ``count`` blocks of ``size`` bytes, prints their addresses
    and keeps them ``hold`` seconds (or, with "eof", until its stdin is closed)."""
    return subprocess.Popen([sys.executable, "-c", CHILD, sim.sysfs_root, sim.dev_root,
                             sim.run_dir, str(size), str(count), str(hold)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ledger(backend: UdmabufBackend):  # type: ignore[no-untyped-def]
    return backend.handle(backend.region()).ledger


def test_two_processes_get_disjoint_blocks(sim: Simulator, backend: UdmabufBackend) -> None:
    child = spawn(sim, 4096, 8, 5)
    theirs = {int(a, 16) for a in child.stdout.readline().split()}  # type: ignore[union-attr]
    kept = [allocate(4096, "u1", backend=backend) for _ in range(8)]  # alive: 8 blocks
    ours = {b.device_address for b in kept}
    assert len(theirs) == 8 and len(ours) == 8 and not theirs & ours
    every = sorted(theirs | ours)
    assert all(b - a >= 4096 for a, b in zip(every, every[1:]))
    child.kill()
    child.wait()


def test_blocks_of_a_killed_process_return_on_the_next_allocation(
        sim: Simulator, backend: UdmabufBackend) -> None:
    child = spawn(sim, 1 << 20, 12, 60)
    child.stdout.readline()  # type: ignore[union-attr]
    assert ledger(backend).stats().used == 12 << 20
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert ledger(backend).reclaim_dead() == 12  # the blocks that went back
    assert ledger(backend).reclaim_dead() == 0
    big = allocate(12 << 20, "u1", backend=backend)  # only fits once the dead blocks are back
    assert big.nbytes == 12 << 20
    big.freebuffer()
    assert ledger(backend).stats().used == 0


def test_one_reclaim_counts_the_blocks_of_every_dead_process(
        sim: Simulator, backend: UdmabufBackend) -> None:
    children = [spawn(sim, 4096, n, 60) for n in (3, 5)]
    for child in children:
        child.stdout.readline()  # type: ignore[union-attr]
    assert ledger(backend).stats().blocks == 8
    for child in children:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert ledger(backend).reclaim_dead() == 3 + 5
    assert ledger(backend).stats().blocks == 0
    ledger(backend).check()


def test_a_process_that_exits_normally_gives_everything_back(
        sim: Simulator, backend: UdmabufBackend) -> None:
    child = spawn(sim, 4096, 5, 0)
    child.communicate()
    assert ledger(backend).stats().used == 0


def test_forked_child_uses_parent_buffers_but_cannot_free_them(
        sim: Simulator, backend: UdmabufBackend) -> None:
    buf = allocate(16, "u4", backend=backend)
    buf[:] = 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: write the parent's memory, flush it, "free" it, allocate its own
        status = 1
        try:
            buf[:] = 2
            buf.flush()
            address = buf.device_address
            buf.freebuffer()
            mine = allocate(16, "u4", backend=backend)
            os.write(write, f"{address} {mine.device_address}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    address, child_address = map(int, os.read(read, 100).split())
    os.close(read)
    assert status == 0
    assert list(buf) == [2] * 16  # MAP_SHARED: the child wrote the same memory
    assert address == buf.device_address and child_address != address
    assert ledger(backend).stats().used == 64  # ours stays; the dead child's came back


def test_corrupt_ledger_is_rebuilt_when_nobody_uses_it(sim: Simulator) -> None:
    backend = sim.backend()
    allocate(16, backend=backend).freebuffer()
    backend_path = ledger(backend).path
    backend.close()
    with open(backend_path, "r+b") as f:
        f.write(b"garbage!")
    fresh = sim.backend()
    with pytest.warns(RuntimeWarning, match="unusable"):
        buf = allocate(16, backend=fresh)
    assert buf.device_address == 0x7E000000


def test_corrupt_ledger_in_use_by_another_process_is_refused(sim: Simulator) -> None:
    child = spawn(sim, 4096, 1, 60)
    child.stdout.readline()  # type: ignore[union-attr]
    path = os.path.join(sim.run_dir, "udmabuf0.ledger")
    with open(path, "r+b") as f:
        f.write(b"garbage!")
    try:
        with pytest.raises(LedgerError, match=r"corrupt.*delete"):
            allocate(16, backend=sim.backend())
    finally:
        child.kill()
        child.wait()


def test_compaction_keeps_the_ledger_small_and_consistent(backend: UdmabufBackend) -> None:
    """12,050 operations on 50 live blocks: without compaction the log would hold all
    of them (12,050 records of 32 bytes, 385,728 bytes with the header); compacted,
    it holds at most one compaction interval of records plus the snapshots."""
    keep = [allocate(64, "u1", align=64, backend=backend) for _ in range(50)]
    led = ledger(backend)
    for _ in range(6000):
        allocate(64, "u1", align=64, backend=backend).freebuffer()
    led.check()  # a fresh replay of the file agrees with this process
    record = ledger_module._RECORD.size
    interval = ledger_module._COMPACT_MIN_RECORDS
    assert os.path.getsize(led.path) <= ledger_module._HEADER_SPACE + (2 * interval + 100) * record
    _, _, epoch, _, records = led._read_header()
    assert epoch >= 2  # 12,050 records: compacted at least twice
    assert records < interval
    assert led.stats().blocks == 50
    del keep


def test_many_processes_never_overlap(sim: Simulator, backend: UdmabufBackend) -> None:
    children = [spawn(sim, 64 << 10, 20, "eof") for _ in range(6)]
    seen = []
    for child in children:  # each keeps its 20 blocks until all six have printed theirs
        seen += [int(a, 16) for a in child.stdout.readline().split()]  # type: ignore[union-attr]
    for child in children:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait()
    assert len(set(seen)) == 120
    seen.sort()
    assert all(b - a >= 64 << 10 for a, b in zip(seen, seen[1:]))
    assert ledger(backend).stats().used == 0


def other_spelling(sim: Simulator, name: str) -> UdmabufBackend:
    """A backend that reaches the simulator's regions through a symlink to its sysfs
    tree (as /sys/devices/... and /sys/class/... name one device): its handles are its
    own, the ledger files the same."""
    link = os.path.join(sim.root, name)
    if not os.path.islink(link):
        os.symlink(sim.sysfs_root, link)
    return UdmabufBackend(link, sim.dev_root, sim.run_dir, ioctl=sim.ioctl)


def test_handles_of_one_region_share_the_process_ledger(sim: Simulator,
                                                        backend: UdmabufBackend) -> None:
    """A second handle of a region in this process uses the ledger object (and owner
    slot) already open, and closing it leaves the first one working."""
    other = other_spelling(sim, "sysfs-link")
    ours = allocate(4096, "u1", backend=backend)
    theirs = allocate(4096, "u1", backend=other)
    assert backend.handle(ours.region) is not other.handle(theirs.region)
    assert ledger(other) is ledger(backend)
    assert ledger(backend).holders(0) == {ledger(backend).slot: 1}
    assert ledger(backend).holders(4096) == {ledger(backend).slot: 1}
    theirs.freebuffer()
    other.close()
    again = allocate(4096, "u1", backend=backend)  # our handle's ledger is still open
    assert again.device_address == 0x7E000000 + 4096
    assert ledger(backend).stats().used == 8192
    book = ledger(backend)
    book.check()
    del ours, again
    backend.close()  # the last handle of the two: the file is closed
    assert book.fd == -1


def test_closing_one_ledger_keeps_the_process_ledgers_of_other_regions(
        sim: Simulator, backend: UdmabufBackend) -> None:
    kept = allocate(64, "u1", target="udmabuf1", backend=backend)
    first = backend.handle(kept.region).ledger
    other = other_spelling(sim, "sysfs-link")
    allocate(64, "u1", target="udmabuf0", backend=other).freebuffer()
    other.close()  # the last user of udmabuf0's ledger in this process
    third = other_spelling(sim, "sysfs-link-2")
    assert third.handle(third.region("udmabuf1")).ledger is first
    del kept


def test_closing_the_last_handle_closes_the_ledger_file(sim: Simulator,
                                                        backend: UdmabufBackend) -> None:
    """...which drops our owner slot's lock: the next process may take slot 0."""
    allocate(64, "u1", backend=backend).freebuffer()
    fd = ledger(backend).fd
    path = os.path.join(sim.run_dir, "udmabuf0.ledger")
    assert os.path.samefile(f"/proc/self/fd/{fd}", path)
    backend.close()
    assert not os.path.exists(f"/proc/self/fd/{fd}") or not os.path.samefile(
        f"/proc/self/fd/{fd}", path)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from pynq_alloc.backends.udmabuf import UdmabufBackend
        backend = UdmabufBackend(*sys.argv[1:4])
        print(backend.handle(backend.region()).ledger.slot)
    """), sim.sysfs_root, sim.dev_root, sim.run_dir], capture_output=True, text=True,
        check=True)
    assert child.stdout.split() == ["0"]


def test_a_free_during_a_ledger_operation_runs_when_it_ends(backend: UdmabufBackend) -> None:
    """A buffer can die (garbage collection) while this thread is inside a ledger
    operation: its free waits for the operation's end instead of re-entering it."""
    buf = allocate(64, "u1", backend=backend)
    led = ledger(backend)
    offset = buf.device_address - 0x7E000000
    with led._locked():
        buf.freebuffer()
        assert led._holds[offset] == {led.slot: 1}  # not yet
        assert led._deferred == [offset]
    assert led.holders(offset) == {}
    assert led.stats().used == 0
    led.check()


def test_a_process_joining_after_the_first_compaction_sees_the_live_blocks(
        sim: Simulator, backend: UdmabufBackend) -> None:
    """The first compaction writes its snapshot after the old log (nothing fits before
    it) and sets epoch 1: a process that opens the ledger then reads the snapshot, not
    the first records of the old log."""
    keep = [allocate(64, "u1", backend=backend) for _ in range(60)]
    del keep[:10]  # the old log's first records are no longer the live set
    led = ledger(backend)
    interval = ledger_module._COMPACT_MIN_RECORDS
    churn_until(backend, lambda: led._epoch != 0)
    assert led._epoch == 1 and led._data_start > ledger_module._HEADER_SPACE
    led.check()
    assert led._records < interval
    child = spawn(sim, 64, 10, 0)
    theirs = {int(a, 16) for a in child.communicate()[0].split()}
    ours = {b.device_address for b in keep}
    assert len(theirs) == 10 and not theirs & ours
    assert theirs == {0x7E000000 + 4096 * i for i in range(10)}  # the pages freed first


# The ledger's file format 2, written out here from its description (pynq_alloc/ledger.py),
# not from the module's constants: processes of two builds of the same format version
# share one file, so a change to it without a new version number breaks a board.
HEADER = struct.Struct("<8sIIQQQQQI")  # magic, version, record size, region size, phys,
#                                         epoch, data start, records, crc32 of the rest
RECORD = struct.Struct("<BxHIQQQ")  # op, slot, tag, offset, size, aux
ALLOC, FREE, BLOCK, HOLD, SEND, RECV, TOKEN, GROW = range(1, 9)
REGION = (16 << 20, 0x7E000000)  # the simulator's udmabuf0


def ledger_file(epoch: int, records: list, version: int = 2) -> bytes:
    head = HEADER.pack(b"PYNQALC1", version, 32, *REGION, epoch, 128, len(records), 0)[:-4]
    return (head + struct.pack("<I", zlib.crc32(head))).ljust(128, b"\0") + b"".join(
        RECORD.pack(*r) for r in records)


def test_a_ledger_log_of_format_2_is_read_as_written(sim: Simulator) -> None:
    """Records of slots 5 and 6 (processes that have since exited): allocations, a
    second holder, a share handed over, a growth and frees."""
    os.makedirs(sim.run_dir)
    with open(os.path.join(sim.run_dir, "udmabuf0.ledger"), "wb") as f:
        f.write(ledger_file(0, [(ALLOC, 5, 0xA, 0, 4096, 0), (ALLOC, 5, 0xB, 4096, 4096, 4096),
                                (HOLD, 6, 0xB, 4096, 0, 2), (SEND, 5, 0xA, 0, 0, 77),
                                (RECV, 6, 0xA, 0, 0, 77), (GROW, 5, 0xB, 4096, 8192, 0),
                                (FREE, 5, 0xA, 0, 0, 0), (HOLD, 6, 0xB, 4096, 0, 2),
                                (FREE, 6, 0xB, 4096, 0, 0), (FREE, 6, 0xB, 4096, 0, 2)]))
    book = ledger(sim.backend())
    assert book.live_blocks() == [(0, 4096, 6), (4096, 8192, 5)]
    # FREE drops `aux` holds, 0 meaning one: slot 6 held 2 + 2 of block 4096, 1 is left
    assert book.holders(0) == {6: 1} and book.holders(4096) == {5: 1, 6: 1}
    assert book.stats().used == 0  # both slots are dead: reclaimed


def test_a_ledger_snapshot_of_format_2_is_read_as_written(sim: Simulator) -> None:
    os.makedirs(sim.run_dir)
    with open(os.path.join(sim.run_dir, "udmabuf0.ledger"), "wb") as f:
        f.write(ledger_file(3, [(BLOCK, 2, 0xC, 8192, 4096, 2), (HOLD, 3, 0xC, 8192, 0, 1),
                                (TOKEN, 2, 0xC, 8192, 0, 99), (BLOCK, 4, 0xD, 65536, 64, 1)]))
    book = ledger(sim.backend())
    assert book.live_blocks() == [(8192, 4096, 2), (65536, 64, 4)]
    assert book.holders(8192) == {2: 2, 3: 1}
    assert book._in_flight == {99: (8192, 2)}
    assert sorted(book.pool.free_blocks())[:2] == [(0, 8192), (12288, 65536 - 12288)]


def test_the_ledger_is_written_in_format_2(sim: Simulator, backend: UdmabufBackend) -> None:
    buf = allocate(100, "u1", backend=backend)
    tag = buf._block.tag
    book = ledger(backend)
    buf.freebuffer()
    with open(os.path.join(sim.run_dir, "udmabuf0.ledger"), "rb") as f:
        data = f.read()
    head = HEADER.unpack(data[:HEADER.size])
    assert head[:8] == (b"PYNQALC1", 2, 32, *REGION, 0, 128, 2)
    assert head[8] == zlib.crc32(data[:HEADER.size - 4])
    assert list(RECORD.iter_unpack(data[128:])) == [(ALLOC, book.slot, tag, 0, 128, 0),
                                                    (FREE, book.slot, 0, 0, 0, 1)]


LOCKER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, (1 << 40) + int(sys.argv[2]))
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_a_slot_is_alive_while_a_process_holds_its_lock_byte(sim: Simulator) -> None:
    """Owner slot N is alive while some process holds a POSIX lock on byte 2**40 + N of
    the ledger file (format 2): here a process that is no pynq_alloc client at all
    holds slot 5's byte. Slot 5's block stays; dead slot 6's returns to the pool."""
    os.makedirs(sim.run_dir)
    path = os.path.join(sim.run_dir, "udmabuf0.ledger")
    with open(path, "wb") as f:
        f.write(ledger_file(0, [(ALLOC, 5, 0xA, 0, 4096, 0), (ALLOC, 6, 0xB, 4096, 4096, 4096)]))
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, path, "5"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline() == "locked\n"  # type: ignore[union-attr]
        book = ledger(sim.backend())
        assert book.slot not in (5, 6)
        assert book.stats().used == 4096
        assert book.live_blocks() == [(0, 4096, 5)]
    finally:
        locker.stdin.close()  # type: ignore[union-attr]
        locker.wait()
    assert book.stats().used == 0  # slot 5's lock went with its process


SLOT_OF_NEXT = textwrap.dedent("""
    import os, sys
    from pynq_alloc.backends.udmabuf import UdmabufBackend
    first = UdmabufBackend(*sys.argv[1:4])
    handle = first.handle(first.region("udmabuf0"))
    handle.mapping(True)  # the region's own descriptors first
    if sys.argv[4] == "no-stdin":  # a daemon without stdin: the ledger gets descriptor 0
        os.close(0)
    book = handle.ledger
    second = UdmabufBackend(os.path.join(sys.argv[5], "sysfs-link"), *sys.argv[2:4])
    assert second.handle(second.region("udmabuf0")).ledger is book
    from pynq_alloc import allocate
    buf = allocate(64, "u1", backend=second)
    del buf
    fd, slot, used = book.fd, book.slot, book.stats().used
    first.close()
    second.close()
    print(fd, slot, used, int(os.path.exists(f"/proc/self/fd/{fd}")), flush=True)
""")


def next_process(sim: Simulator, how: str) -> list:
    link = os.path.join(sim.root, "sysfs-link")
    if not os.path.islink(link):
        os.symlink(sim.sysfs_root, link)
    child = subprocess.run([sys.executable, "-c", SLOT_OF_NEXT, sim.sysfs_root, sim.dev_root,
                            sim.run_dir, how, sim.root], capture_output=True, text=True,
                           timeout=60, check=False)
    assert child.returncode == 0, child.stderr
    return [int(word) for word in child.stdout.split()]


def test_a_recovered_ledger_leaves_the_other_slots_free(sim: Simulator) -> None:
    """After a corrupt ledger is rebuilt (nobody used it), this process holds its one
    slot only: the next process takes the next slot."""
    path = os.path.join(sim.run_dir, "udmabuf0.ledger")
    os.makedirs(sim.run_dir)
    with open(path, "wb") as f:
        f.write(b"garbage!" * 20)
    with pytest.warns(RuntimeWarning, match="unusable"):
        book = ledger(sim.backend())
    assert book.slot == 0
    assert next_process(sim, "stdin")[1] == 1


def test_a_ledger_on_descriptor_0_is_shared_and_works(sim: Simulator) -> None:
    """A daemon started without stdin gets descriptor 0 for the ledger file: it is a
    descriptor like any other (shared by the process's handles, used, closed with the
    last of them)."""
    fd, slot, used, still_open = next_process(sim, "no-stdin")
    assert (fd, slot, used, still_open) == (0, 0, 0, 0)


def test_a_refused_ledger_operation_leaves_the_ledger_usable(sim: Simulator,
                                                             backend: UdmabufBackend) -> None:
    """A ledger operation that fails on entry (here: the header found corrupt) leaves
    no trace: once the file is mended, a free takes effect at once and under the file
    lock, as another process's replay of the file shows."""
    buf = allocate(64, "u1", backend=backend)
    book = ledger(backend)
    path = os.path.join(sim.run_dir, "udmabuf0.ledger")
    with open(path, "r+b") as f:
        header = f.read(HEADER.size)
        f.seek(0)
        f.write(b"garbage!")
    with pytest.raises(LedgerError, match="corrupt"):
        allocate(64, "u1", backend=backend)
    with open(path, "r+b") as f:
        f.write(header)
    buf.freebuffer()
    assert book._deferred == [] and book.holders(0) == {}
    assert book.stats().used == 0
    child = spawn(sim, 64, 1, 0)  # replays the file: the block is free, so it gets it
    assert child.communicate()[0].split() == [hex(0x7E000000)]


def test_a_ledger_of_another_format_version_is_rebuilt_when_unused(sim: Simulator) -> None:
    """Same record size, other version number (1: records without holds): its records
    mean something else, so it is not read; nobody uses it, so it starts afresh."""
    os.makedirs(sim.run_dir)
    with open(os.path.join(sim.run_dir, "udmabuf0.ledger"), "wb") as f:
        f.write(ledger_file(0, [(ALLOC, 5, 0xA, 0, 4096, 0)], version=1))
    with pytest.warns(RuntimeWarning, match=r"format version 1 \(record size 32\) is not ours"):
        book = ledger(sim.backend())
    assert book.live_blocks() == []


def test_a_record_past_the_committed_count_is_ignored(sim: Simulator,
                                                      backend: UdmabufBackend) -> None:
    """A process killed between writing a record and committing the header leaves
    bytes past the last record the header counts: the others read up to the count."""
    ours = allocate(64, "u1", backend=backend)
    child = spawn(sim, 64, 1, 0)  # appends its ALLOC (and FREE) while our ledger is open
    theirs = child.communicate()[0].split()
    with open(os.path.join(sim.run_dir, "udmabuf0.ledger"), "ab") as f:
        f.write(RECORD.pack(ALLOC, 9, 0xE, 1 << 20, 4096, 0))  # never committed
    book = ledger(backend)
    assert book.live_blocks() == [(ours.device_address - 0x7E000000, 64, book.slot)]
    assert len(theirs) == 1 and int(theirs[0], 16) != ours.device_address
    book.check()


def test_a_new_ledger_file_is_started_without_a_warning(sim: Simulator) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        buf = allocate(64, "u1", backend=sim.backend())
    assert os.path.getsize(os.path.join(sim.run_dir, "udmabuf0.ledger")) == 128 + 32  # 1 ALLOC
    del buf


def unused(op: int, size: int, aux: int) -> str:
    return f"operation {op} with a non-zero field it does not use (size {size}, aux {aux})"


BAD_RECORDS = pytest.mark.parametrize("records, why", [
    ([(FREE, 5, 0, 0, 0, 1)], "slot 5 holds no block at 0x0"),
    ([(ALLOC, 5, 0xA, 0, 4096, 0), (FREE, 6, 0xA, 0, 0, 1)], "slot 6 holds no block at 0x0"),
    # format 2 leaves the size field of these operations 0, and a GROW's aux
    ([(ALLOC, 5, 0xA, 0, 4096, 0), (HOLD, 6, 0xA, 0, 1, 1)], unused(4, 1, 1)),
    ([(ALLOC, 5, 0xA, 0, 4096, 0), (FREE, 5, 0xA, 0, 4096, 1)], unused(2, 4096, 1)),
    ([(ALLOC, 5, 0xA, 0, 4096, 0), (SEND, 5, 0xA, 0, 1, 7)], unused(5, 1, 7)),
    ([(ALLOC, 5, 0xA, 0, 4096, 0), (SEND, 5, 0xA, 0, 0, 7), (RECV, 6, 0xA, 0, 1, 7)],
     unused(6, 1, 7)),
    ([(BLOCK, 5, 0xA, 0, 4096, 1), (TOKEN, 5, 0xA, 0, 1, 7)], unused(7, 1, 7)),
    ([(ALLOC, 5, 0xA, 0, 4096, 0), (GROW, 5, 0xA, 0, 8192, 1)], unused(8, 8192, 1)),
    ([(ALLOC, 5, 0xA, 0, 4096, 0), (RECV, 6, 0xA, 0, 0, 7)], "receipt of 0x0: no such transfer"),
], ids=["no such block", "not a holder", "HOLD size", "FREE size", "SEND size", "RECV size",
        "TOKEN size", "GROW aux", "RECV unsent"])


@BAD_RECORDS
def test_a_bad_record_in_a_ledger_nobody_uses_is_rebuilt_naming_it(
        sim: Simulator, records: list, why: str) -> None:
    """A record the replay cannot apply (a free of a slot that holds nothing, a receipt
    of a transfer never sent) or one with a value in a field its operation leaves 0 is
    corruption; like a bad header, it is rebuilt when no process uses the ledger."""
    os.makedirs(sim.run_dir)
    with open(os.path.join(sim.run_dir, "udmabuf0.ledger"), "wb") as f:
        f.write(ledger_file(0, records))
    expected = rf"unusable \(record {len(records) - 1}: {re.escape(why)}\)"
    with pytest.warns(RuntimeWarning, match=expected):
        buf = allocate(4096, "u1", backend=sim.backend())
    assert buf.device_address == REGION[1] and ledger(sim.backend()).stats().blocks == 1


@BAD_RECORDS
def test_a_bad_record_in_a_ledger_in_use_is_refused_naming_it(
        sim: Simulator, records: list, why: str) -> None:
    child = spawn(sim, 4096, 1, "eof")
    child.stdout.readline()  # type: ignore[union-attr]
    path = os.path.join(sim.run_dir, "udmabuf0.ledger")
    with open(path, "r+b") as f:  # in place: the child's slot lock stays on this file
        f.write(ledger_file(0, records))
        f.truncate()
    try:
        expected = rf"corrupt \(record {len(records) - 1}: {re.escape(why)}\).*delete"
        with pytest.raises(LedgerError, match=expected):
            ledger(sim.backend())
    finally:
        child.kill()
        child.wait()


def test_a_compaction_leaves_the_log_it_replaces_intact(backend: UdmabufBackend) -> None:
    """Until the new header is written, the old one is the ledger: a process killed
    right before that write must leave the records the old header counts untouched.
    So the snapshot (here two blocks, small enough to fit where the log starts) goes
    after the old log, and the bytes the old header points at do not change."""
    keep = [allocate(64, "u1", backend=backend) for _ in range(2)]
    book = ledger(backend)
    churn_until(backend, lambda: book._records >= ledger_module._COMPACT_MIN_RECORDS - 2)
    buf = allocate(64, "u1", backend=backend)  # one record short of compacting
    with open(book.path, "rb") as f:
        before = f.read()
    start, count = book._data_start, book._records
    buf.freebuffer()  # its FREE record is the one that triggers the compaction
    assert book._epoch == 1 and book._records == 2  # the snapshot: two BLOCK records
    with open(book.path, "rb") as f:
        after = f.read()
    old_log = slice(start, start + count * RECORD.size)
    assert after[old_log] == before[old_log]
    assert book._data_start >= start + (count + 1) * RECORD.size
    book.check()
    # the next snapshot fits before that log: the file is cut
    churn_until(backend, lambda: book._epoch != 1)
    assert book._data_start == ledger_module._HEADER_SPACE
    assert os.path.getsize(book.path) == book._data_start + book._records * RECORD.size
    book.check()
    del keep


def test_reclaiming_a_dead_slot_keeps_our_own_slot_alive(sim: Simulator,
                                                          backend: UdmabufBackend) -> None:
    """We hold slot 1, a killed process held slot 0: reclaiming slot 0 (its lock byte
    taken to check, then let go) must not let go of ours, or the next process would
    reclaim our live blocks and be handed their memory."""
    first = spawn(sim, 4096, 1, 60)
    first.stdout.readline()  # type: ignore[union-attr]
    kept = [allocate(4096, "u1", backend=backend)]
    assert ledger(backend).slot == 1
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    first.stdout.close()  # type: ignore[union-attr]
    kept.append(allocate(4096, "u1", backend=backend))  # reclaims slot 0 first
    ours = {b.device_address for b in kept}
    second = spawn(sim, 4096, 2, 0)
    theirs = {int(a, 16) for a in second.communicate()[0].split()}
    assert len(theirs) == 2 and not theirs & ours
    assert ledger(backend).stats().used == 2 * 4096


def test_a_reclaimed_slot_is_free_for_the_next_process(sim: Simulator,
                                                        backend: UdmabufBackend) -> None:
    kept = allocate(4096, "u1", backend=backend)  # we hold slot 0
    child = spawn(sim, 4096, 1, 60)  # slot 1
    child.stdout.readline()  # type: ignore[union-attr]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()  # type: ignore[union-attr]
    assert ledger(backend).stats().used == 4096  # slot 1 reclaimed: its lock byte taken, let go
    assert next_process(sim, "stdin")[1] == 1
    del kept


def test_a_ledger_with_no_live_block_compacts_to_an_empty_snapshot(
        backend: UdmabufBackend) -> None:
    book = ledger(backend)
    churn_until(backend, lambda: book._epoch != 0)
    assert (book._records, book.stats().used) == (0, 0)
    assert os.path.getsize(book.path) == ledger_module._HEADER_SPACE
    book.check()


USAGE_IN_ANOTHER_PROCESS = textwrap.dedent("""
    import sys
    from pynq_alloc.backends.udmabuf import UdmabufBackend
    backend = UdmabufBackend(*sys.argv[1:4])
    ledger = backend.handle(backend.region()).ledger
    print(ledger.stats().used, sorted(ledger.holders(int(sys.argv[4])).values()))
""")


def test_a_hold_taken_and_dropped_reads_the_same_in_another_process(
        sim: Simulator, backend: UdmabufBackend) -> None:
    """The HOLD record says one hold, as this process counts it: once the sharer and
    this process have both let go, a process replaying the file sees the block free."""
    child = spawn(sim, 4096, 1, "eof")
    address = int(child.stdout.readline(), 16)  # type: ignore[union-attr]
    ours = ledger(backend)
    offset = address - REGION[1]
    ours.hold(offset, 4096, ours._tags[offset])

    def seen_elsewhere() -> str:
        return subprocess.run([sys.executable, "-c", USAGE_IN_ANOTHER_PROCESS, sim.sysfs_root,
                               sim.dev_root, sim.run_dir, str(offset)], check=True,
                              capture_output=True, text=True).stdout.strip()

    assert seen_elsewhere() == "4096 [1, 1]"  # the child's hold and ours, one each
    ours.free(offset)
    assert seen_elsewhere() == "4096 [1]"
    child.stdin.close()  # type: ignore[union-attr]
    child.wait()
    assert seen_elsewhere() == "0 []"


def test_a_forked_child_freeing_the_parents_block_does_nothing(
        sim: Simulator, backend: UdmabufBackend) -> None:
    """The child's copy of the ledger is the parent's: its free() returns without
    touching the file (it must not try to lock it as if it were its own)."""
    buf = allocate(4096, "u1", backend=backend)
    offset = buf.device_address - REGION[1]
    parent_ledger = ledger(backend)
    records_before = os.path.getsize(parent_ledger.path)

    def in_child() -> str:
        parent_ledger.free(offset)
        return "returned"
    assert in_forked_child(in_child, catch=Exception) == "returned"
    assert os.path.getsize(parent_ledger.path) == records_before
    assert parent_ledger.holders(offset) == {parent_ledger.slot: 1}
    del buf


def test_a_second_free_of_the_same_block_writes_nothing(
        sim: Simulator, backend: UdmabufBackend) -> None:
    """A block already given back (or reclaimed) is not freed again: no FREE record
    that another process's replay would find corrupt."""
    lg = ledger(backend)
    offset, _, _ = lg.allocate(4096, 4096)
    lg.free(offset)
    size = os.path.getsize(lg.path)
    lg.free(offset)
    assert os.path.getsize(lg.path) == size
    assert subprocess.run([sys.executable, "-c", USAGE_IN_ANOTHER_PROCESS, sim.sysfs_root,
                           sim.dev_root, sim.run_dir, str(offset)], check=True,
                          capture_output=True, text=True).stdout.strip() == "0 []"
    lg.check()


def test_a_ledger_directory_made_by_another_process_meanwhile_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process may create the directory between the existence check and
    mkdir: that is no error."""
    run_dir = tmp_path / "pynq-alloc"
    run_dir.mkdir()
    real_isdir, calls = os.path.isdir, []

    def not_there_at_first(path: str) -> bool:  # the check ran before the other mkdir
        calls.append(path)
        return False if len(calls) == 1 else real_isdir(path)
    monkeypatch.setattr(ledger_module.os.path, "isdir", not_there_at_first)
    ledger_module._ensure_dir(str(run_dir), None)
    assert calls[0] == str(run_dir)
    assert run_dir.is_dir()
