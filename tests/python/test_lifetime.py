"""Freeing: never unmaps memory under a live view, never hands out memory still in use."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
from pynq_alloc import BufferFreedError, allocate
from pynq_alloc.backends.udmabuf import UdmabufBackend


def used(backend: UdmabufBackend) -> int:
    return backend.handle(backend.region()).ledger.stats().used


def test_freebuffer_returns_the_memory_at_once_without_views(backend: UdmabufBackend) -> None:
    buf = allocate(1 << 20, "u1", backend=backend)
    assert used(backend) == 1 << 20
    buf.freebuffer()
    assert used(backend) == 0


def test_free_with_a_live_view_is_deferred_until_the_view_dies(backend: UdmabufBackend) -> None:
    buf = allocate(1024, "u4", backend=backend)
    buf[:] = 7
    address = buf.device_address
    view = buf[10:20]
    buf.freebuffer()
    assert used(backend) == 4096  # still reserved: the view points at it
    assert np.asarray(view).tolist() == [7] * 10  # still mapped, still ours
    with pytest.raises(BufferFreedError, match="was freed"):
        view[0]
    other = allocate(1024, "u4", backend=backend)
    assert other.device_address != address
    with pytest.raises(BufferFreedError, match="was freed"):
        view.flush()
    del view
    gc.collect()
    assert used(backend) == 4096  # only `other` remains
    other.freebuffer()
    assert used(backend) == 0


def test_memory_of_a_freed_buffer_is_never_handed_out_while_a_view_lives(
        backend: UdmabufBackend) -> None:
    buf = allocate(4096, "u1", backend=backend)
    address = buf.device_address
    view = buf[:]
    buf.freebuffer()
    fresh = [allocate(4096, "u1", backend=backend) for _ in range(4)]
    assert address not in [b.device_address for b in fresh]
    del view


def test_a_freed_buffer_is_empty_and_refuses_device_calls(backend: UdmabufBackend) -> None:
    buf = allocate((4, 4), "u4", backend=backend)
    buf.freebuffer()
    assert buf.size == 0 and buf.freed
    for call in (lambda: buf.device_address, buf.flush, buf.invalidate, buf.sync_to_device,
                 lambda: buf.coherent, lambda: buf.physical_address):
        with pytest.raises(BufferFreedError, match="Allocate a new buffer"):
            call()


@pytest.mark.parametrize("access", [
    lambda b: b[0], lambda b: b[1:], lambda b: b.__setitem__(0, 1), lambda b: b + 1,
    lambda b: b.sum()], ids=["get", "slice", "set", "ufunc", "reduce"])
def test_element_access_on_a_freed_buffer_or_its_view_says_it_was_freed(
        backend: UdmabufBackend, access: Any) -> None:
    buf = allocate((4, 4), "u4", backend=backend)
    view = buf[1]
    buf.freebuffer()
    for freed in (buf, view):
        with pytest.raises(BufferFreedError, match="was freed"):
            access(freed)


def test_close_is_idempotent_and_freebuffer_twice_is_harmless(backend: UdmabufBackend) -> None:
    buf = allocate(4, backend=backend)
    buf.close()
    buf.close()
    buf.freebuffer()
    assert used(backend) == 0


def test_freeing_through_a_view_leaves_the_allocation_alone(backend: UdmabufBackend) -> None:
    """PYNQ's rule: only the array allocate() returned frees the block."""
    buf = allocate(16, backend=backend)
    buf[:] = np.arange(16)
    buf[4:].freebuffer()
    buf[4:8].close()
    with buf.reshape(4, 4) as matrix:
        matrix[0, 0] = 99
    assert not buf.freed and used(backend) == 64  # one granule
    assert buf[:3].tolist() == [99, 1, 2]
    del matrix  # a live view defers the release
    buf.freebuffer()
    assert buf.freed and used(backend) == 0


def test_context_manager_frees_on_exit(backend: UdmabufBackend) -> None:
    with allocate(1 << 16, "u1", backend=backend) as buf:
        buf[:] = 1
        assert used(backend) == 1 << 16
    assert used(backend) == 0 and buf.freed


def test_dropping_the_last_reference_frees(backend: UdmabufBackend) -> None:
    for _ in range(10):
        allocate(1 << 20, "u1", backend=backend)[:] = 3
    assert used(backend) == 0


def test_plain_ndarrays_over_a_buffer_keep_it_alive(backend: UdmabufBackend) -> None:
    buf = allocate(8, "u4", backend=backend)
    buf[:] = np.arange(8)
    plain = np.asarray(buf)[2:]
    del buf
    gc.collect()
    assert used(backend) == 64  # granule-rounded
    assert list(plain) == [2, 3, 4, 5, 6, 7]
    del plain
    assert used(backend) == 0


def test_mapping_cannot_be_closed_under_live_buffers(backend: UdmabufBackend) -> None:
    first, second = allocate(8, backend=backend), allocate(8, backend=backend)
    with pytest.raises(BufferError, match="2 buffer"):
        backend.close()
    del first
    with pytest.raises(BufferError, match="1 buffer"):  # one still maps the region
        backend.close()
    del second
    backend.close()  # the last one gone: closing is allowed
