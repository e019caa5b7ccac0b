"""dma-buf export and import as far as the host can hold them: the simulator has no export
ioctl (the real driver's export is tested in tests/target/test_dmabuf.py), so these check
the refusals and the in-place growth to whole pages that every export starts with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pynq_alloc import DriverInterfaceError, InvalidArgumentError, allocate, from_dmabuf
from pynq_alloc.backends.udmabuf import UdmabufBackend
from pynq_alloc.pool import Pool


def test_a_region_without_the_export_ioctl_says_to_use_share(backend: UdmabufBackend) -> None:
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
