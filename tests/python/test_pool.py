"""The pool: aligned, disjoint, coalescing, every byte accounted for."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynq_alloc import InvalidArgumentError, OutOfMemoryError
from pynq_alloc.pool import Pool


def test_frees_coalesce_back_into_one_block() -> None:
    pool = Pool(1 << 20, 0x40000000)
    offsets = [pool.allocate(4096, 4096) for _ in range(256)]
    random.Random(1).shuffle(offsets)
    for offset in offsets:
        pool.release(offset)
        pool.check()
    assert list(pool.free_blocks()) == [(0, 1 << 20)]


def test_alignment_is_of_the_physical_address() -> None:
    pool = Pool(1 << 20, 0x40001000)  # base only 4 KiB aligned
    offset = pool.allocate(100, 1 << 16)
    assert (0x40001000 + offset) % (1 << 16) == 0
    pool.check()


def test_blocks_never_share_a_cache_line() -> None:
    pool = Pool(1 << 16, 0, granule=64)
    a, b = pool.allocate(1, 64), pool.allocate(1, 64)
    assert abs(a - b) >= 64


def test_double_free_is_refused_and_changes_nothing() -> None:
    pool = Pool(1 << 16)
    offset = pool.allocate(64, 64)
    pool.release(offset)
    with pytest.raises(InvalidArgumentError, match="already freed"):
        pool.release(offset)
    pool.check()


def test_out_of_memory_leaves_the_pool_unchanged() -> None:
    pool = Pool(1 << 16)
    pool.allocate(1 << 15, 64)
    with pytest.raises(OutOfMemoryError, match="largest free block is 32768"):
        pool.allocate((1 << 15) + 64, 64)
    assert pool.stats().used == 1 << 15
    pool.check()


def fits(pool: Pool, size: int, align: int) -> list:
    """Brute force, independent of the pool's search: every free block that can hold
    ``size`` bytes at a physical address aligned to ``align`` (ordered by start)."""
    found = []
    for start, free_size in sorted(pool.free_blocks()):
        offset = start + (-(pool.base_address + start)) % align
        if offset + size <= start + free_size:
            found.append((start, offset))
    return found


def test_a_fit_beyond_the_scan_bound_is_still_found() -> None:
    """The one fitting hole is in the request's own size class (4..8 KiB), behind more
    than the bounded scan looks at of holes that are too small, and no larger class
    has a free block: only the exhaustive pass finds it."""
    pool = Pool(1 << 20, 0)
    hole = pool.allocate(7168, 64)  # class 4..8 KiB, fits 6144
    fences = [pool.allocate(64, 64)]
    small = []
    for _ in range(20):  # 20 > the scan bound: 4 KiB holes, same class, too small
        small.append(pool.allocate(4096, 64))
        fences.append(pool.allocate(64, 64))
    pool.allocate(pool.stats().largest_free, 64)  # fill the tail: no larger class
    pool.release(hole)
    for offset in small:
        pool.release(offset)
    assert fits(pool, 6144, 64) == [(hole, hole)]
    assert pool.allocate(6144, 64) == hole
    assert fits(pool, 6144, 64) == []
    with pytest.raises(OutOfMemoryError):
        pool.allocate(6144, 64)
    # what is left of the hole (1 KiB) is an exact fit, found by the same pass
    assert pool.allocate(1024, 64) == hole + 6144
    pool.check()


def test_stats_count_every_byte() -> None:
    pool = Pool(1 << 20, 0)
    a, b = pool.allocate(5000, 64), pool.allocate(100, 4096)
    stats = pool.stats()
    assert (stats.size, stats.used, stats.blocks) == (1 << 20, 5056 + 128, 2)
    assert stats.free == (1 << 20) - 5056 - 128
    pool.release(a)
    pool.release(b)
    assert pool.stats().free == pool.stats().largest_free == 1 << 20


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(1, 70000),
                              st.sampled_from([64, 128, 4096, 65536])), max_size=120),
       base=st.sampled_from([0, 0x40000000, 0x7E001000, 0x8_0000_0040]))
def test_random_sequences_keep_every_invariant(ops: list, base: int) -> None:
    pool = Pool(1 << 20, base)
    live: dict = {}
    for do_alloc, size, align in ops:
        if do_alloc or not live:
            try:
                offset = pool.allocate(size, align)
            except OutOfMemoryError:
                assert fits(pool, pool.round_size(size), max(align, pool.granule)) == []
                continue
            assert (base + offset) % align == 0
            assert offset + size <= pool.size
            for other, other_size in live.items():
                assert offset + size <= other or other + other_size <= offset
            live[offset] = pool.block_size(offset)
        else:
            offset = sorted(live)[size % len(live)]
            pool.release(offset)
            del live[offset]
        pool.check()
        assert pool.stats().used == sum(live.values())
    for offset in list(live):
        pool.release(offset)
    assert list(pool.free_blocks()) == [(0, pool.size)]


@pytest.mark.parametrize("granule", [1, 2, 64, 4096])
def test_any_power_of_two_granule_is_accepted(granule: int) -> None:
    pool = Pool(1 << 16, 0, granule=granule)
    offset = pool.allocate(1, granule)
    assert pool.block_size(offset) == granule
    pool.check()


@pytest.mark.parametrize("granule", [0, -64, 3, 48, 96])
def test_a_granule_that_is_not_a_power_of_two_is_refused(granule: int) -> None:
    with pytest.raises(InvalidArgumentError, match=f"granule {granule} is not a power of two"):
        Pool(1 << 16, 0, granule=granule)


def test_a_region_size_not_a_granule_multiple_is_cut_to_whole_granules() -> None:
    pool = Pool(1000, 0, granule=64)
    assert pool.size == 960
    assert list(pool.free_blocks()) == [(0, 960)]
    pool.allocate(960, 64)
    with pytest.raises(OutOfMemoryError):
        pool.allocate(1, 64)


def test_a_request_takes_the_smallest_fitting_class_not_the_first_free_block() -> None:
    """Segregated fit: a 4 KiB request goes into the 4 KiB hole, and the big free block
    (first in the free lists, where an exhaustive first-fit would cut it) stays whole."""
    pool = Pool(1 << 20, 0)
    hole = pool.allocate(4096, 64)
    pool.allocate(64, 64)  # keeps the hole from merging with the big block behind it
    pool.release(hole)  # the big block entered the free lists first, the hole after it
    big = pool.stats().largest_free
    assert pool.allocate(4096, 64) == hole  # an exact fit, in its own class
    assert pool.stats().largest_free == big
    pool.check()



def test_a_request_is_served_from_the_smallest_class_that_has_a_fit() -> None:
    """Segregated fit, checked against a brute-force scan on random pools: a request
    comes out of the smallest size class (floor of log2 of a free block's size) that
    holds a block fitting it, also when smaller classes (its own included) hold only
    blocks too small for it and when the block that fits is not the class's most
    recent. Only states where every class up to that one holds at most the scan bound
    (8) of blocks count: beyond it the search may take a block of a bigger class."""
    rng = random.Random(16)
    checked = 0
    for _ in range(400):
        pool = Pool(1 << 20, rng.choice([0, 0x7E001000]))
        live = [pool.allocate(rng.randrange(64, 40000), rng.choice([64, 4096]))
                for _ in range(rng.randrange(4, 30))]
        for offset in rng.sample(live, len(live) // 2):
            pool.release(offset)
        size, align = pool.round_size(rng.randrange(64, 30000)), rng.choice([64, 4096])
        free = dict(pool.free_blocks())
        fitting = [start for start, _ in fits(pool, size, align)]
        if not fitting:
            continue
        best = min(free[start].bit_length() - 1 for start in fitting)
        classes = [n.bit_length() - 1 for n in free.values()]
        if any(classes.count(c) > 8 for c in range(best + 1)):
            continue
        offset = pool.allocate(size, align)
        start = next(s for s in fitting if s <= offset < s + free[s])
        assert free[start].bit_length() - 1 == best, (free, size, align, offset)
        checked += 1
        pool.check()
    assert checked > 150


def test_an_exact_fit_only_the_exhaustive_pass_sees_is_taken() -> None:
    """The one block that can hold the request holds it exactly, and it is behind
    more blocks of its size class than the bounded scan looks at, all too small."""
    pool = Pool(1 << 20, 0)
    hole = pool.allocate(7168, 64)
    small = []
    for _ in range(20):
        pool.allocate(64, 64)  # fences: no two holes merge
        small.append(pool.allocate(4096, 64))
    pool.allocate(pool.stats().largest_free, 64)  # no larger class
    for offset in [hole, *small]:
        pool.release(offset)
    assert fits(pool, 7168, 64) == [(hole, hole)]
    assert pool.allocate(7168, 64) == hole
    pool.check()


@pytest.mark.parametrize("free_start, offset, size", [
    (0, 0, 4096 + 64),  # ends one granule past the free block
    (0, 4096, 64),  # starts at the free block's end
    (64, 64, 64),  # no free block starts there
    (8192, 4096, 64),  # starts before the free block
])
def test_a_carve_outside_the_named_free_block_is_refused(
        free_start: int, offset: int, size: int) -> None:
    """What the ledger replays from other processes' records: a record naming a block
    that is not inside a free block is refused, and the pool is unchanged."""
    pool = Pool(1 << 16, 0)
    fence = pool.allocate(4096, 64)
    pool.allocate(4096, 64)
    pool.release(fence)  # free: [0, 4096) and [8192, 65536)
    before = sorted(pool.free_blocks())
    with pytest.raises(InvalidArgumentError, match="is not inside a free block"):
        pool.carve(free_start, offset, size)
    assert sorted(pool.free_blocks()) == before
    pool.check()


def test_a_full_pool_reports_no_free_block() -> None:
    pool = Pool(1 << 16, 0)
    pool.allocate(1 << 16, 64)
    stats = pool.stats()
    assert (stats.used, stats.free, stats.largest_free, stats.blocks) == (1 << 16, 0, 0, 1)
    with pytest.raises(OutOfMemoryError, match="largest free block is 0 bytes"):
        pool.allocate(64, 64)


def test_the_bounded_scan_looks_at_eight_blocks_of_a_class() -> None:
    """The boundary of the rule above: eight free blocks in the request's class, the one
    that fits freed first (the last the scan looks at); a larger class has room too,
    but the request still comes out of its own class."""
    pool = Pool(1 << 20, 0)
    fit = pool.allocate(6144, 64)
    pool.allocate(64, 64)
    small = []
    for _ in range(7):
        small.append(pool.allocate(4096, 64))
        pool.allocate(64, 64)
    for offset in [fit, *small]:
        pool.release(offset)
    assert pool.allocate(5000, 64) == fit
    pool.check()
