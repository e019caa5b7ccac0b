"""flush/invalidate sync exactly the bytes an array spans, in one command each."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pynq_alloc import InvalidArgumentError, SyncError, allocate
from pynq_alloc.backends.sim import SimRegion, Simulator
from pynq_alloc.backends.udmabuf import (
    FROM_DEVICE,
    TO_DEVICE,
    UdmabufBackend,
    encode_sync,
    mapping_kind,
    sync_commands,
)

BASE = 0x7E000000


def spans(sim: Simulator) -> list:
    """The sync commands the simulated driver received since the last clear, in order."""
    return [(r.attr, r.offset, r.size, r.direction, r.valid) for r in sim.sync_requests()]


def test_encoding_matches_the_driver_documentation() -> None:
    assert encode_sync(0x1000, 0x2000, TO_DEVICE) == 0x0000100000002005


def test_flush_cleans_and_invalidate_discards_each_once(sim: Simulator,
                                                        backend: UdmabufBackend) -> None:
    buf = allocate(10, "u4", cacheable=True, backend=backend)  # 40 bytes
    offset = buf.device_address - BASE
    sim.clear_sync_requests()  # allocation may sync the fresh block (zero-fill)
    buf.flush()
    assert spans(sim) == [("sync_for_device", offset, 64, TO_DEVICE, True)]
    sim.clear_sync_requests()
    buf.invalidate()
    assert spans(sim) == [("sync_for_cpu", offset, 64, FROM_DEVICE, True)]


def test_a_view_flushes_only_its_own_span(sim: Simulator, backend: UdmabufBackend) -> None:
    buf = allocate(4096, "u1", cacheable=True, backend=backend)
    base = buf.device_address - BASE
    for sync, expected in [
            (buf[1000:1100].flush, ("sync_for_device", base + 960, 192, TO_DEVICE, True)),
            (buf[::-1][10:20].sync_to_device,  # bytes 4076..4085
             ("sync_for_device", base + 4032, 64, TO_DEVICE, True)),
            (buf.reshape(64, 64)[3:5, 10:12].sync_from_device,  # bytes 202..267
             ("sync_for_cpu", base + 192, 128, FROM_DEVICE, True))]:
        sim.clear_sync_requests()
        sync()
        assert spans(sim) == [expected]


@pytest.mark.parametrize("make_view, lines", [
    (lambda b: b[0:65], (0, 128)),  # the last byte alone in the second line
    (lambda b: b[63:65], (0, 128)),  # two bytes, one each side of a line boundary
    (lambda b: b[64:129], (64, 128)),
    (lambda b: b.view("<u4")[1:17], (0, 128)),  # bytes 4..67: last element in the 2nd line
    (lambda b: b.view("<u8")[0:9], (0, 128)),  # bytes 0..71
    (lambda b: b.view("<u2")[0:33:32], (0, 128)),  # elements at bytes 0 and 64: ends at 66
    (lambda b: b[128:63:-1], (64, 128)),  # reversed: lowest byte 64, highest 128
    (lambda b: b[100:62:-1], (0, 128)),  # reversed: the lowest byte alone in its line
    (lambda b: b[62:66].view("<u4"), (0, 128)),  # one element straddling the boundary
    (lambda b: b[58:66].view("<u4")[::-1], (0, 128)),  # ... last in memory, first in order
], ids=["u1 65", "u1 63:65", "u1 64:129", "u4 1:17", "u8 0:9", "u2 step 32", "u1 reversed",
        "u1 reversed from 63", "unaligned u4", "unaligned u4 reversed"])
def test_a_span_that_ends_past_a_line_boundary_syncs_that_line(
        sim: Simulator, backend: UdmabufBackend, make_view: Any, lines: tuple) -> None:
    buf = allocate(256, "u1", cacheable=True, backend=backend)
    base = buf.device_address - BASE
    sim.clear_sync_requests()
    make_view(buf).flush()
    assert spans(sim) == [("sync_for_device", base + lines[0], lines[1], TO_DEVICE, True)]


def test_never_syncs_the_whole_region(sim: Simulator, backend: UdmabufBackend) -> None:
    bufs = [allocate(n, "u1", cacheable=True, backend=backend) for n in (1, 100, 5000, 1 << 20)]
    sim.clear_sync_requests()
    for buf in bufs:
        buf.flush()
    requests = sim.sync_requests()
    assert len(requests) == len(bufs)
    for request, buf in zip(requests, bufs):
        start = buf.device_address - BASE
        assert request.offset == start
        assert request.size == -(-buf.nbytes // 64) * 64 < 16 << 20


def test_one_system_call_per_flush(sim: Simulator, backend: UdmabufBackend) -> None:
    buf = allocate(1 << 20, "u1", cacheable=True, backend=backend)
    buf.flush()
    sim.clear_sync_requests()
    for _ in range(50):
        buf.flush()
    assert len(sim.ioctl_calls()) == 50  # what the driver received, not what we counted
    assert {(r.offset, r.size) for r in sim.sync_requests()} == {
        (buf.device_address - BASE, 1 << 20)}


def test_coherent_regions_and_uncached_buffers_need_no_sync(sim: Simulator,
                                                            backend: UdmabufBackend) -> None:
    coherent = allocate(64, target="udmabuf1", cacheable=True, backend=backend)
    uncached = allocate(64, cacheable=False, backend=backend)
    sim.clear_sync_requests()
    for buf in (coherent, uncached):
        buf.flush()
        buf.invalidate()
    assert coherent.coherent and not uncached.cacheable
    assert sim.sync_requests() == [] and sim.ioctl_calls() == []


def test_sync_ranges_are_clipped_to_the_region_and_split_at_2_gib() -> None:
    assert sync_commands(100, 10, TO_DEVICE, 128) == [encode_sync(64, 64, TO_DEVICE)]
    assert sync_commands(0, 3 << 30, FROM_DEVICE, 4 << 30) == [
        encode_sync(0, 2 << 30, FROM_DEVICE), encode_sync(2 << 30, 1 << 30, FROM_DEVICE)]
    with pytest.raises(SyncError, match="32-bit offset"):
        sync_commands(5 << 30, 64, TO_DEVICE, 8 << 30)
    # the last line below 4 GiB is expressible, the first one at 4 GiB is not
    assert sync_commands((4 << 30) - 64, 64, TO_DEVICE, 8 << 30) == [
        encode_sync((4 << 30) - 64, 64, TO_DEVICE)]
    with pytest.raises(SyncError, match="32-bit offset"):
        sync_commands(4 << 30, 64, TO_DEVICE, 8 << 30)


@pytest.mark.parametrize("sync_mode, o_sync, kind", [
    (0, True, "cached"), (1, False, "cached"), (1, True, "device"), (2, True, "write-combine"),
    (3, True, "dma-coherent"), (4, True, "cached"), (5, False, "device"),
    (6, False, "write-combine"), (7, False, "dma-coherent")])
def test_mapping_kind_follows_the_driver_sync_mode_table(sync_mode: int, o_sync: bool,
                                                         kind: str) -> None:
    assert mapping_kind(sync_mode, o_sync) == kind


@pytest.mark.parametrize("sync_mode, cacheable, words", [
    (1, False, "Device memory"), (5, True, "Device memory"), (0, False, "keeps the CPU cache on")])
def test_mappings_numpy_cannot_use_are_refused(sync_mode: int, cacheable: bool,
                                               words: str) -> None:
    with Simulator([SimRegion(sync_mode=sync_mode)]) as sim, \
            pytest.raises(InvalidArgumentError, match=words):
        allocate(4, cacheable=cacheable, backend=sim.backend())


def test_write_combine_everywhere_reports_an_uncached_buffer() -> None:
    with Simulator([SimRegion(sync_mode=6)], record_syncs=True) as sim:
        buf = allocate(4, cacheable=True, backend=sim.backend())
        assert not buf.cacheable
        buf[:] = np.arange(4)
        sim.clear_sync_requests()
        buf.flush()
        buf.invalidate()
        assert sim.sync_requests() == [] and sim.ioctl_calls() == []
        # ... and the recorder does hear a sync of the same block when one is sent
        buf.region  # noqa: B018
        sim.backend().handle(buf.region).sync(buf.device_address - buf.region.phys_addr, 16,
                                              TO_DEVICE)
        assert len(sim.sync_requests()) == 1
