"""Aligned sub-allocator over one contiguous region (segregated fits, coalescing frees).

Free blocks are kept in power-of-two size classes (as TLSF does), each class an
indexed set so that insert, remove and pick are O(1); a free block is found by
its start and by its end, so a free merges with both neighbours in O(1).  The
cost of an allocation therefore does not grow with the number of live blocks
(the issue asks for at most logarithmic growth).

Alignment is of the *physical* address (``base_address + offset``), which is
what DMA engines see.  Every block is a whole number of ``granule`` bytes and
starts on a granule boundary, with the granule at least one cache line: two
blocks never share a cache line, so invalidating one buffer can never discard
a neighbour's dirty line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from .errors import InvalidArgumentError, OutOfMemoryError

_CLASSES = 64
# Candidates looked at per size class before moving to a larger one; a larger
# class always fits (unless alignment padding spoils it), so this bounds the
# cost of an allocation. When nothing is found this way, one exhaustive pass
# runs before reporting out-of-memory, so the bound never causes a false OOM.
_SCAN_LIMIT = 8


class _IndexedSet:
    """A set of ints with O(1) add, remove and access to the most recent members."""

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: List[int] = []
        self.pos: Dict[int, int] = {}

    def add(self, value: int) -> None:
        self.pos[value] = len(self.items)
        self.items.append(value)

    def remove(self, value: int) -> None:
        index = self.pos.pop(value)
        last = self.items.pop()
        if last != value:
            self.items[index] = last
            self.pos[last] = index


@dataclass(frozen=True)
class PoolStats:
    """Usage of one pool, in bytes."""

    size: int
    used: int
    free: int
    largest_free: int
    blocks: int


def _size_class(size: int) -> int:
    return size.bit_length() - 1


class Pool:
    """Sub-allocates aligned blocks of ``[0, size)`` of a region at ``base_address``."""

    def __init__(self, size: int, base_address: int = 0, granule: int = 64) -> None:
        if granule <= 0 or granule & (granule - 1):
            raise InvalidArgumentError(f"granule {granule} is not a power of two")
        self.size = size - size % granule
        self.base_address = base_address
        self.granule = granule
        self._free_by_start: Dict[int, int] = {}
        self._free_by_end: Dict[int, int] = {}
        self._classes = [_IndexedSet() for _ in range(_CLASSES)]
        self._nonempty = 0  # bit k set <=> size class k holds a free block
        self._used: Dict[int, int] = {}
        self.used_bytes = 0
        if self.size:
            self._add_free(0, self.size)

    # -- free-block bookkeeping -------------------------------------------------
    def _add_free(self, start: int, size: int) -> None:
        self._free_by_start[start] = size
        self._free_by_end[start + size] = start
        cls = _size_class(size)
        self._classes[cls].add(start)
        self._nonempty |= 1 << cls

    def _remove_free(self, start: int) -> int:
        size = self._free_by_start.pop(start)
        del self._free_by_end[start + size]
        cls = _size_class(size)
        members = self._classes[cls]
        members.remove(start)
        if not members.items:
            self._nonempty &= ~(1 << cls)
        return size

    def _aligned(self, start: int, align: int) -> int:
        address = self.base_address + start
        return start + (-address) % align

    # -- the operations that change the pool (also replayed by the ledger) -------
    def carve(self, free_start: int, offset: int, size: int) -> None:
        """Take ``[offset, offset+size)`` out of the free block that starts at ``free_start``."""
        free_size = self._free_by_start.get(free_start)
        if free_size is None or offset < free_start or offset + size > free_start + free_size:
            raise InvalidArgumentError(
                f"block [{offset:#x}, +{size:#x}) is not inside a free block at {free_start:#x}"
            )
        self._remove_free(free_start)
        if offset > free_start:
            self._add_free(free_start, offset - free_start)
        end, free_end = offset + size, free_start + free_size
        if free_end > end:
            self._add_free(end, free_end - end)
        self._used[offset] = size
        self.used_bytes += size

    def release(self, offset: int) -> int:
        """Return the block at ``offset`` to the free list, merging with free neighbours."""
        size = self._used.pop(offset, None)
        if size is None:
            raise InvalidArgumentError(
                f"no allocated block starts at offset {offset:#x}: it was already freed "
                f"or never allocated from this pool"
            )
        self.used_bytes -= size
        start, end = offset, offset + size
        before = self._free_by_end.get(start)
        if before is not None:
            self._remove_free(before)
            start = before
        after = self._free_by_start.get(end)
        if after is not None:
            end += self._remove_free(end)
        self._add_free(start, end - start)
        return size

    def grow(self, offset: int, new_size: int) -> int:
        """Extend the used block at ``offset`` in place to ``new_size`` bytes, out of the
        free block right after it; returns that free block's start (what the ledger
        records, so other processes replay the same change)."""
        size = self._used.get(offset)
        if size is None:
            raise InvalidArgumentError(f"no allocated block starts at offset {offset:#x}")
        end, extra = offset + size, new_size - size
        if extra <= 0:
            return end
        free_size = self._free_by_start.get(end)
        if free_size is None or free_size < extra:
            raise InvalidArgumentError(
                f"block [{offset:#x}, +{size:#x}) cannot grow to {new_size:#x} bytes: the "
                f"next {extra} bytes are not free")
        self._remove_free(end)
        if free_size > extra:
            self._add_free(end + extra, free_size - extra)
        self._used[offset] = new_size
        self.used_bytes += extra
        return end

    # -- queries ----------------------------------------------------------------
    def round_size(self, size: int) -> int:
        """The size a request of ``size`` bytes really takes (whole granules)."""
        return -(-size // self.granule) * self.granule

    def find(self, size: int, align: int) -> Optional[Tuple[int, int]]:
        """Where a block of ``size`` bytes aligned to ``align`` fits: (free_start, offset)."""
        candidates = self._nonempty >> _size_class(size) << _size_class(size)
        while candidates:
            lowest = candidates & -candidates
            candidates ^= lowest
            items = self._classes[lowest.bit_length() - 1].items
            for free_start in items[-1 : -_SCAN_LIMIT - 1 : -1]:
                offset = self._aligned(free_start, align)
                if offset + size <= free_start + self._free_by_start[free_start]:
                    return free_start, offset
        for free_start, free_size in self._free_by_start.items():
            offset = self._aligned(free_start, align)
            if offset + size <= free_start + free_size:
                return free_start, offset
        return None

    def take(self, size: int, align: int) -> Tuple[int, int, int]:
        """Allocate ``size`` bytes (rounded up to whole granules) at ``align``.

        Returns (offset, size taken, start of the free block it was carved from): the
        last is what the ledger records, so that other processes replay the same carve.
        """
        align = max(align, self.granule)
        size = self.round_size(size)
        spot = self.find(size, align)
        if spot is None:
            raise self.out_of_memory(size, align)
        self.carve(spot[0], spot[1], size)
        return spot[1], size, spot[0]

    def allocate(self, size: int, align: int) -> int:
        """Allocate ``size`` bytes at ``align``; return the offset."""
        return self.take(size, align)[0]

    def out_of_memory(self, size: int, align: int) -> OutOfMemoryError:
        stats = self.stats()
        return OutOfMemoryError(
            f"cannot allocate {size} bytes aligned to {align:#x}: the largest free block is "
            f"{stats.largest_free} bytes ({stats.free} free of {stats.size} in the region). "
            f"Free buffers you no longer need (freebuffer()/close()/del), allocate less, or "
            f"give the region more memory in the device tree."
        )

    def block_size(self, offset: int) -> Optional[int]:
        return self._used.get(offset)

    def used_blocks(self) -> Iterator[Tuple[int, int]]:
        return iter(self._used.items())

    def free_blocks(self) -> Iterator[Tuple[int, int]]:
        return iter(self._free_by_start.items())

    def stats(self) -> PoolStats:
        largest = 0
        if self._nonempty:
            items = self._classes[self._nonempty.bit_length() - 1].items
            largest = max(self._free_by_start[s] for s in items)
        return PoolStats(
            size=self.size,
            used=self.used_bytes,
            free=self.size - self.used_bytes,
            largest_free=largest,
            blocks=len(self._used),
        )

    def check(self) -> None:
        """Verify every invariant; raise AssertionError naming the first one broken.

        Blocks (used and free) tile ``[0, size)`` exactly, no two free blocks touch,
        every free block is in the right size class, every block is granule-aligned.
        """
        spans = sorted([(s, n, "used") for s, n in self._used.items()]
                       + [(s, n, "free") for s, n in self._free_by_start.items()])
        position, previous = 0, ""
        for start, size, kind in spans:
            if start != position:
                raise AssertionError(
                    f"{kind} block at {start:#x} but the previous one ends at {position:#x}")
            if size <= 0 or start % self.granule or size % self.granule:
                raise AssertionError(f"{kind} block [{start:#x}, +{size:#x}) is not granular")
            if kind == previous == "free":
                raise AssertionError(f"free block at {start:#x} touches the previous free block")
            if kind == "free":
                if self._free_by_end.get(start + size) != start:
                    raise AssertionError(f"free block at {start:#x} missing from the end index")
                if start not in self._classes[_size_class(size)].pos:
                    raise AssertionError(f"free block at {start:#x} missing from its size class")
            position, previous = start + size, kind
        if position != self.size:
            raise AssertionError(f"blocks cover up to {position:#x}, region is {self.size:#x}")
        if sum(self._used.values()) != self.used_bytes:
            raise AssertionError("used byte count does not match the used blocks")
        if sum(len(c.items) for c in self._classes) != len(self._free_by_start):
            raise AssertionError("size classes hold blocks that are not free")
        if self._nonempty != sum(1 << k for k, c in enumerate(self._classes) if c.items):
            raise AssertionError("the non-empty class bitmap is out of date")
