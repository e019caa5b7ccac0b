"""Cross-process ownership of a region's blocks, with reclaim of dead owners.

Every process on the board that allocates from a region shares one ledger
file (``<run_dir>/<region>.ledger``, on tmpfs). It is an append-only log of
block operations behind a fixed header; each process keeps a mirror
:class:`~pynq_alloc.pool.Pool` and, under an exclusive ``flock``, replays only
the records appended since it last looked, so an operation costs O(1) amortised
whatever the number of live blocks. When the log grows long it is compacted
into a snapshot of the live blocks, written beside the old data and committed by
one header write, so a process killed at any instant leaves a valid ledger.

A block may have several holders (a buffer shared with other processes of
ours, :meth:`Buffer.share`): each process that holds it has a hold recorded
against its slot, and the block returns to the pool when the last hold goes.
Every block carries a random 32-bit tag, fixed when it is allocated, so that a
hold taken through a share handle can tell "the block I was sent" from a later
block at the same offset.

Owners are *slots*, not PIDs: each process holds a POSIX record lock on one
byte (``_SLOT_LOCK_BASE + slot``) of the ledger file for its lifetime. The
kernel drops that lock when the process dies however it dies (SIGKILL
included), so "is the owner alive?" is one non-blocking lock attempt and PID
reuse cannot fool it. Blocks of a dead slot return to the pool the next time
any process allocates.

The caveat of POSIX locks: closing *any* descriptor of the file drops all of
the process's locks on it, so this module opens the file exactly once per
process and region.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Set, Tuple

from ._platform import current_pid
from .errors import (
    BufferFreedError,
    DevicePermissionError,
    InvalidArgumentError,
    LedgerError,
    device_error,
)
from .pool import Pool, PoolStats

if TYPE_CHECKING:
    from .backends.udmabuf import RegionHandle

_MAGIC = b"PYNQALC1"
# 2: records carry the block's tag; HOLD, SEND, RECV, TOKEN, GROW records; FREE drops ``aux``
# holds (0 means one).
# A ledger of another version is rebuilt when no process uses it, refused otherwise.
_VERSION = 2
# magic, version, record size, region size, region phys, epoch, data start, records, crc32
_HEADER = struct.Struct("<8sIIQQQQQI")
_HEADER_SPACE = 128
# op, slot, tag, offset, size, aux (ALLOC: start of the free block it was carved from;
# BLOCK and HOLD: the number of holds; FREE: holds dropped, 0 meaning one; SEND, RECV and
# TOKEN: the transfer token)
_RECORD = struct.Struct("<BxHIQQQ")
_OP_ALLOC, _OP_FREE, _OP_BLOCK, _OP_HOLD, _OP_SEND, _OP_RECV, _OP_TOKEN = 1, 2, 3, 4, 5, 6, 7
_OP_GROW = 8  # size: the block's new size (whole pages, for a dma-buf export)
_SLOT_LOCK_BASE = 1 << 40  # far beyond any data: lock bytes never overlap records
_MAX_SLOTS = 1 << 15
_COMPACT_MIN_RECORDS = 4096
_FILE_MODE = 0o660  # the device's group shares the ledger
# the operations whose records leave the size field 0 (GROW leaves aux 0): a record
# with a value there is not one we wrote
_NO_SIZE = frozenset((_OP_HOLD, _OP_FREE, _OP_SEND, _OP_RECV, _OP_TOKEN))


class _CorruptError(Exception):
    pass


class Ledger:
    """The shared ownership record of one region, as seen from this process."""

    # This process's owner slot, set when the ledger is opened (_take_slot); where the
    # log starts and how many records it holds, set by the first header read
    # (_replay_new_records) or write (_write_header). Each before any other use.
    slot: int
    _data_start: int
    _records: int

    def __init__(self, path: str, fd: int, pool: Pool, region_name: str) -> None:
        self.path = path
        self.fd = fd
        self.pool = pool
        self.region_name = region_name
        self.pid = current_pid()
        self._epoch = -1  # no file has this epoch: the first catch-up replays from the start
        self._holds: Dict[int, Dict[int, int]] = {}  # block offset -> {slot: holds}
        self._tags: Dict[int, int] = {}  # block offset -> its tag
        self._blocks_of: Dict[int, Set[int]] = {}  # slot -> offsets of blocks it holds
        # transfer token -> (offset, sending slot): a hold the sender took when a share
        # handle was pickled, handed to whichever process unpickles it first
        self._in_flight: Dict[int, Tuple[int, int]] = {}
        self._region_key = (pool.size, pool.base_address)
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._deferred: List[int] = []
        self.users = 1  # handles sharing this object (see open())

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, handle: RegionHandle) -> Ledger:
        """This process's ledger of the handle's region, shared by every handle of it.

        One object per process and ledger file: a second descriptor of the file
        would share our record locks (POSIX locks belong to the process), so a
        second slot in this process would look dead to the first and be reclaimed,
        and closing it would drop the first one's slot lock.
        """
        region = handle.region
        run_dir = handle.backend.run_dir
        path = os.path.join(run_dir, f"{region.name}.ledger")
        with _registry_lock:
            try:
                st = os.stat(path)
                found = _open_ledgers.get((st.st_dev, st.st_ino))
            except OSError:
                found = None
            if found is not None and found.pid == current_pid() and found.fd >= 0:
                found.users += 1
                return found
            ledger = cls._open_file(handle, path)
            st = os.fstat(ledger.fd)
            _open_ledgers[(st.st_dev, st.st_ino)] = ledger
            return ledger

    @classmethod
    def _open_file(cls, handle: RegionHandle, path: str) -> Ledger:
        region = handle.region
        gid = _group_of(region.device_path)
        _ensure_dir(handle.backend.run_dir, gid)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        except OSError as exc:
            what = f"cannot open the ledger of region {region.name}"
            raise device_error(exc, what, path) from exc
        try:  # let every member of the device's group share the ledger
            if os.fstat(fd).st_uid == os.geteuid():
                if gid is not None:
                    os.fchown(fd, -1, gid)
                os.fchmod(fd, _FILE_MODE)  # open()'s mode went through the umask (0640)
        except OSError:
            pass
        pool = Pool(region.size, region.phys_addr)
        ledger = cls(path, fd, pool, region.name)
        with ledger._locked(catch_up=False):
            ledger._load_or_init()
            ledger._take_slot()
        return ledger

    def close(self) -> None:
        """One user fewer; the last one closes the file (dropping our slot lock, which
        makes any block we still own reclaimable by other processes)."""
        with _registry_lock:
            self.users -= 1
            if self.users > 0:
                return
            for key, ledger in list(_open_ledgers.items()):
                if ledger is self:
                    del _open_ledgers[key]
            if self.fd >= 0 and self.pid == current_pid():
                os.close(self.fd)
            self.fd = -1

    # -- locking and replay --------------------------------------------------------
    def _acquire(self, catch_up: bool = True) -> bool:
        """Enter a ledger operation; True for the outermost one of this thread."""
        self._thread_lock.acquire()
        self._depth += 1
        if self._depth > 1:
            return False
        try:
            if self.fd < 0 or self.pid != current_pid():
                raise LedgerError(
                    f"the ledger of region {self.region_name} belongs to process "
                    f"{self.pid}; a forked child allocates through its own handle",
                    errno.EBADF, self.path)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            if catch_up:
                try:
                    self._catch_up()
                except BaseException:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                    raise
        except BaseException:
            self._depth -= 1
            self._thread_lock.release()
            raise
        return True

    def _release(self, outermost: bool) -> None:
        try:
            if outermost:
                try:
                    while self._deferred:
                        self._free_locked(self._deferred.pop())
                finally:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self._depth -= 1
            self._thread_lock.release()

    @contextmanager
    def _locked(self, catch_up: bool = True) -> Iterator[None]:
        outermost = self._acquire(catch_up)
        try:
            yield
        finally:
            self._release(outermost)

    def _read_header(self) -> Tuple[int, int, int, int, int]:
        raw = os.pread(self.fd, _HEADER.size, 0)
        if len(raw) < _HEADER.size:
            raise _CorruptError(f"header is {len(raw)} bytes long, expected {_HEADER.size}")
        magic, version, rec_size, size, phys, epoch, start, count, crc = _HEADER.unpack(raw)
        if magic != _MAGIC:
            raise _CorruptError(f"bad magic {magic!r}")
        if zlib.crc32(raw[: _HEADER.size - 4]) != crc:
            raise _CorruptError("header checksum mismatch")
        if version != _VERSION or rec_size != _RECORD.size:
            raise _CorruptError(f"format version {version} (record size {rec_size}) is not ours")
        return size, phys, epoch, start, count

    def _write_header(self, epoch: int, start: int, count: int) -> None:
        size, phys = self._region_key
        body = _HEADER.pack(_MAGIC, _VERSION, _RECORD.size, size, phys, epoch, start, count, 0)
        crc = zlib.crc32(body[: _HEADER.size - 4])
        os.pwrite(self.fd, body[:-4] + struct.pack("<I", crc), 0)
        self._epoch, self._data_start, self._records = epoch, start, count

    def _load_or_init(self) -> None:
        if os.fstat(self.fd).st_size == 0:
            self._write_header(0, _HEADER_SPACE, 0)
            return
        try:
            size, phys, _, _, _ = self._read_header()
            if (size, phys) != self._region_key:
                raise _CorruptError(f"it describes a region of {size} bytes at {phys:#x}, "
                               f"not {self._region_key[0]} bytes at {self._region_key[1]:#x}")
            self._replay_new_records()
        except _CorruptError as why:
            # A bad record is as unusable as a bad header: rebuilt when nobody uses it.
            self._recover(str(why))

    def _recover(self, why: str) -> None:
        """Start a fresh ledger when nobody else uses this one; refuse otherwise."""
        if self._other_slots_alive():
            raise LedgerError(
                f"the ledger {self.path} of region {self.region_name} is corrupt ({why}) while "
                f"other processes use the region. Stop every process that uses "
                f"{self.region_name}, then delete {self.path}: it is rebuilt on the next "
                f"allocation.", errno.EUCLEAN, self.path)
        warnings.warn(f"pynq_alloc: the ledger {self.path} was unusable ({why}) and no process "
                      f"used it: starting a fresh one", RuntimeWarning, stacklevel=4)
        os.ftruncate(self.fd, 0)
        self._reset_mirror()
        self._write_header(0, _HEADER_SPACE, 0)

    def _reset_mirror(self) -> None:
        self.pool = Pool(self.pool.size, self.pool.base_address, self.pool.granule)
        self._holds.clear()
        self._tags.clear()
        self._blocks_of.clear()
        self._in_flight.clear()

    def _replay_new_records(self) -> None:
        """Bring the mirror up to the file; _CorruptError when the file is unusable."""
        _, _, epoch, start, count = self._read_header()
        if epoch != self._epoch:
            self._reset_mirror()
            self._epoch, self._data_start, self._records = epoch, start, 0
        if count > self._records:
            self._replay(self._records, count)

    def _catch_up(self) -> None:
        try:
            self._replay_new_records()
        except _CorruptError as why:
            raise LedgerError(
                f"the ledger {self.path} of region {self.region_name} is corrupt ({why}). Stop "
                f"every process that uses {self.region_name}, then delete {self.path}: it is "
                f"rebuilt on the next allocation.", errno.EUCLEAN, self.path) from None

    def _replay(self, first: int, last: int) -> None:
        raw = os.pread(self.fd, (last - first) * _RECORD.size,
                       self._data_start + first * _RECORD.size)
        if len(raw) != (last - first) * _RECORD.size:
            raise _CorruptError(f"{last} records announced, file holds fewer")
        snapshot_free = 0
        for index, (op, slot, tag, offset, size, aux) in enumerate(_RECORD.iter_unpack(raw)):
            try:
                if size if op in _NO_SIZE else aux if op == _OP_GROW else 0:
                    raise InvalidArgumentError(f"operation {op} with a non-zero field it "
                                               f"does not use (size {size}, aux {aux})")
                if op == _OP_ALLOC:
                    self.pool.carve(aux, offset, size)
                    self._tags[offset] = tag
                    self._add_hold(offset, slot, 1)
                elif op == _OP_BLOCK:
                    self.pool.carve(snapshot_free, offset, size)
                    snapshot_free = offset + size
                    self._tags[offset] = tag
                    self._add_hold(offset, slot, aux)
                elif op == _OP_HOLD:
                    if self._tags.get(offset) != tag:
                        raise InvalidArgumentError(f"hold on {offset:#x}: no such block")
                    self._add_hold(offset, slot, aux)
                elif op == _OP_FREE:
                    if self._holds.get(offset, {}).get(slot, 0) <= 0:
                        raise InvalidArgumentError(f"slot {slot} holds no block at {offset:#x}")
                    self._drop_holds(offset, slot, aux or 1)
                elif op in (_OP_SEND, _OP_TOKEN):
                    if self._tags.get(offset) != tag:
                        raise InvalidArgumentError(f"transfer of {offset:#x}: no such block")
                    if op == _OP_SEND:
                        self._add_hold(offset, slot, 1)
                    self._in_flight[aux] = (offset, slot)
                elif op == _OP_GROW:
                    if self._tags.get(offset) != tag:
                        raise InvalidArgumentError(f"growth of {offset:#x}: no such block")
                    self.pool.grow(offset, size)
                elif op == _OP_RECV:
                    pending = self._in_flight.get(aux)
                    if pending is None or pending[0] != offset:
                        raise InvalidArgumentError(f"receipt of {offset:#x}: no such transfer")
                    self._receive(offset, slot, aux)
                else:
                    raise _CorruptError(f"record {first + index} has unknown operation {op}")
            except InvalidArgumentError as exc:
                raise _CorruptError(f"record {first + index}: {exc}") from None
        self._records = last

    def _add_hold(self, offset: int, slot: int, count: int) -> None:
        holders = self._holds.setdefault(offset, {})
        holders[slot] = holders.get(slot, 0) + count
        self._blocks_of.setdefault(slot, set()).add(offset)

    def _drop_holds(self, offset: int, slot: int, count: int) -> None:
        """Drop ``count`` of ``slot``'s holds; the block goes back when none is left."""
        holders = self._holds[offset]
        left = holders[slot] - count
        if left > 0:
            holders[slot] = left
            return
        del holders[slot]
        self._blocks_of[slot].discard(offset)
        for token, (where, sender) in list(self._in_flight.items()):
            if where == offset and sender == slot:
                del self._in_flight[token]  # a transfer without its hold is void
        if not holders:
            del self._holds[offset]
            del self._tags[offset]
            self.pool.release(offset)

    def _receive(self, offset: int, slot: int, token: int) -> None:
        """The hold of transfer ``token`` passes from its sender to ``slot``."""
        _, sender = self._in_flight.pop(token)
        self._add_hold(offset, slot, 1)  # first: the block's hold count never reaches 0
        self._drop_holds(offset, sender, 1)

    def _append(self, op: int, slot: int, offset: int, size: int, aux: int, *,
                tag: int = 0) -> None:
        record = _RECORD.pack(op, slot, tag, offset, size, aux)
        os.pwrite(self.fd, record, self._data_start + self._records * _RECORD.size)
        self._write_header(self._epoch, self._data_start, self._records + 1)
        if self._records >= _COMPACT_MIN_RECORDS and self._records > 4 * len(self._holds):
            self._compact()

    def _compact(self) -> None:
        """Write a snapshot of the live blocks where it overlaps no current data; commit it."""
        records = []
        for off, size in sorted(self.pool.used_blocks()):
            (slot, holds), *others = sorted(self._holds[off].items())
            tag = self._tags[off]
            records.append(_RECORD.pack(_OP_BLOCK, slot, tag, off, size, holds))
            records += [_RECORD.pack(_OP_HOLD, s, tag, off, 0, n) for s, n in others]
        records += [_RECORD.pack(_OP_TOKEN, slot, self._tags[off], off, 0, token)
                    for token, (off, slot) in sorted(self._in_flight.items())]
        snapshot = b"".join(records)
        data_end = self._data_start + self._records * _RECORD.size
        fits_before = self._data_start - _HEADER_SPACE >= len(snapshot)
        start = _HEADER_SPACE if fits_before else data_end
        os.pwrite(self.fd, snapshot, start)
        self._write_header(self._epoch + 1, start, len(records))
        if start == _HEADER_SPACE:
            os.ftruncate(self.fd, start + len(snapshot))
        self._records = len(records)

    # -- owners ----------------------------------------------------------------------
    def _slot_free(self, slot: int) -> bool:
        """True when no living process holds ``slot``'s lock byte (tries to take it)."""
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SLOT_LOCK_BASE + slot)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        return True

    def _release_slot_lock(self, slot: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, _SLOT_LOCK_BASE + slot)

    def _other_slots_alive(self) -> bool:
        # Only at open (from _recover), before this process takes a slot: unlocking the
        # whole range afterwards would drop our own slot's byte too.
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _MAX_SLOTS, _SLOT_LOCK_BASE)
        except OSError:
            return True
        fcntl.lockf(self.fd, fcntl.LOCK_UN, _MAX_SLOTS, _SLOT_LOCK_BASE)
        return False

    def _take_slot(self) -> None:
        for slot in range(_MAX_SLOTS):
            if self._slot_free(slot):
                self.slot = slot
                self._reclaim(slot)  # whatever a dead former holder left
                return
        raise LedgerError(
            f"all {_MAX_SLOTS} owner slots of {self.path} are held by living processes; "
            f"fewer processes must use region {self.region_name} at once", errno.EUSERS, self.path)

    def _reclaim(self, slot: int) -> int:
        """Drop every hold of a dead slot; count the blocks that went back to the pool."""
        returned = 0
        for offset in sorted(self._blocks_of.get(slot, set())):
            holds = self._holds[offset][slot]
            self._drop_holds(offset, slot, holds)
            self._append(_OP_FREE, slot, offset, 0, holds)
            returned += offset not in self._holds
        self._blocks_of.pop(slot, None)
        return returned

    def reclaim_dead(self) -> int:
        """Return to the pool every block whose owner process has died; count them."""
        reclaimed = 0
        for slot in [s for s, blocks in self._blocks_of.items() if blocks and s != self.slot]:
            if self._slot_free(slot):
                reclaimed += self._reclaim(slot)
                self._release_slot_lock(slot)
        return reclaimed

    # -- the operations ----------------------------------------------------------------
    def allocate(self, size: int, align: int) -> Tuple[int, int, int]:
        """Take a block for this process: (offset, size really taken, its tag)."""
        outermost = self._acquire()  # the hot path: no context-manager overhead
        try:
            self.reclaim_dead()
            offset, size, free_start = self.pool.take(size, align)
            tag = random.getrandbits(32)
            self._tags[offset] = tag
            self._add_hold(offset, self.slot, 1)
            self._append(_OP_ALLOC, self.slot, offset, size, free_start, tag=tag)
            return offset, size, tag
        finally:
            self._release(outermost)

    def _check_alive(self, offset: int, size: int, tag: int) -> None:
        if self._tags.get(offset) != tag or (self.pool.block_size(offset) or 0) < size:
            raise BufferFreedError(
                f"the shared buffer at offset {offset:#x} of region {self.region_name} was "
                f"freed by every process that held it before this one took it: keep the "
                f"sender's buffer (or its share handle) alive until the receiver has it")

    def send(self, offset: int, size: int, tag: int) -> int:
        """Take a hold that the process receiving a share handle will take over: the
        block then outlives the sender's buffer while the handle is on its way. Returns
        the transfer's token; a transfer nobody receives is dropped with its sender."""
        with self._locked():
            self._check_alive(offset, size, tag)
            token = random.getrandbits(63) + 1
            self._add_hold(offset, self.slot, 1)
            self._in_flight[token] = (offset, self.slot)
            self._append(_OP_SEND, self.slot, offset, 0, token, tag=tag)
            return token

    def hold(self, offset: int, size: int, tag: int, token: int = 0) -> None:
        """Take a hold, for this process, on a live block another one shares: the
        in-flight hold of transfer ``token`` if it is still pending, else a new one.

        Refused (BufferFreedError) when the block at ``offset`` is no longer the one
        with ``tag`` and ``size``: every holder freed it before this call.
        """
        with self._locked():
            self.reclaim_dead()
            self._check_alive(offset, size, tag)
            pending = self._in_flight.get(token)
            if pending is not None and pending[0] == offset:
                self._receive(offset, self.slot, token)
                self._append(_OP_RECV, self.slot, offset, 0, token, tag=tag)
                return
            self._add_hold(offset, self.slot, 1)
            self._append(_OP_HOLD, self.slot, offset, 0, 1, tag=tag)

    def grow(self, offset: int, tag: int, new_size: int) -> None:
        """Extend a live block of ours in place (to whole pages, before a dma-buf export
        of it): refused with InvalidArgumentError when the bytes after it are in use."""
        with self._locked():
            if self._tags.get(offset) != tag:
                raise BufferFreedError(f"no live block at offset {offset:#x} of "
                                       f"{self.region_name} to grow")
            self.pool.grow(offset, new_size)
            self._append(_OP_GROW, self.slot, offset, new_size, 0, tag=tag)

    def in_flight(self) -> int:
        """Share handles pickled and not yet received (each holds its block)."""
        with self._locked():
            self.reclaim_dead()
            return len(self._in_flight)

    def holders(self, offset: int) -> Dict[int, int]:
        """{slot: holds} of the block at ``offset`` ({} when it is free), after catching up."""
        with self._locked():
            return dict(self._holds.get(offset, {}))

    def free(self, offset: int) -> None:
        """Drop one hold of this process on a block. Re-entrant: a free that happens while
        this thread is inside a ledger operation (garbage collection) runs when it ends."""
        if self.fd < 0 or self.pid != current_pid():
            return  # forked child, or closed: the block is not ours to give back
        with self._thread_lock:
            if self._depth:
                self._deferred.append(offset)
                return
            outermost = self._acquire()
            try:
                self._free_locked(offset)
            finally:
                self._release(outermost)

    def _free_locked(self, offset: int) -> None:
        if self._holds.get(offset, {}).get(self.slot, 0) <= 0:
            return  # already reclaimed or given back: nothing to do
        self._drop_holds(offset, self.slot, 1)
        self._append(_OP_FREE, self.slot, offset, 0, 1)

    # -- inspection ---------------------------------------------------------------------
    def stats(self) -> PoolStats:
        with self._locked():
            self.reclaim_dead()
            return self.pool.stats()

    def live_blocks(self) -> List[Tuple[int, int, int]]:
        """(offset, size, owner slot) of every live block, after catching up."""
        with self._locked():
            return sorted((off, size, min(self._holds[off]))
                          for off, size in self.pool.used_blocks())

    def check(self, against_file: bool = True) -> None:
        """Verify the pool invariants, the owners and (unless ``against_file`` is False)
        that a fresh replay of the whole file agrees with this process's mirror."""
        with self._locked():
            self.pool.check()
            if set(self._holds) != {off for off, _ in self.pool.used_blocks()}:
                raise AssertionError("holders do not match the used blocks")
            if set(self._tags) != set(self._holds):
                raise AssertionError("tags do not match the used blocks")
            if any(not held or min(held.values()) <= 0 for held in self._holds.values()):
                raise AssertionError("a used block without a positive hold")
            if not against_file:
                return
            fresh = Ledger(self.path, self.fd, Pool(self.pool.size, self.pool.base_address),
                           self.region_name)
            fresh._catch_up()
            if (sorted(fresh.pool.used_blocks()) != sorted(self.pool.used_blocks())
                    or fresh._holds != self._holds or fresh._tags != self._tags
                    or fresh._in_flight != self._in_flight):
                raise AssertionError("the ledger file and this process's mirror disagree")


_registry_lock = threading.Lock()
# (st_dev, st_ino) of a ledger file -> this process's Ledger of it
_open_ledgers: Dict[Tuple[int, int], Ledger] = {}


def _forget_parent_ledgers() -> None:
    # A forked child holds none of its parent's record locks: it opens its own.
    _open_ledgers.clear()


os.register_at_fork(after_in_child=_forget_parent_ledgers)


def _group_of(device_path: str) -> Optional[int]:
    try:
        return os.stat(device_path).st_gid
    except OSError:
        return None


def _ensure_dir(run_dir: str, gid: Optional[int]) -> None:
    if os.path.isdir(run_dir):
        return
    try:
        os.makedirs(run_dir, exist_ok=True)
        # setgid + group-writable: every member of the device's group shares the ledgers.
        if gid is not None:
            os.chown(run_dir, -1, gid)
        os.chmod(run_dir, 0o2770)
    except PermissionError as exc:
        raise DevicePermissionError(
            f"cannot create the ledger directory {run_dir}: {exc.strerror}. Create it once as "
            f"root: `install -d -m 2770 -g dma {run_dir}` (on images with meta-pynq-alloc "
            f"or the pynq-alloc-board package, systemd-tmpfiles makes it at boot from "
            f"/usr/lib/tmpfiles.d/pynq-alloc.conf), or point PYNQ_ALLOC_RUN_DIR at a "
            f"directory shared by every user of the regions.",
            exc.errno or errno.EACCES, run_dir) from exc
    except OSError as exc:
        raise device_error(exc, "cannot create the ledger directory", run_dir) from exc
