"""allocate(): PYNQ's signature, and a clear error for every bad argument."""

from __future__ import annotations

import numpy as np
import pynq_alloc
import pytest
from pynq_alloc import (
    Buffer,
    OutOfMemoryError,
    allocate,
)
from pynq_alloc.backends.sim import Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend


def test_seed_example_runs_verbatim(backend: UdmabufBackend) -> None:
    buf = allocate(shape=(5,), dtype="u4", backend=backend)
    buf[:] = range(5)
    buf.flush()
    assert isinstance(buf, Buffer) and isinstance(buf, np.ndarray)
    assert list(buf) == [0, 1, 2, 3, 4]
    assert buf.device_address == 0x7E000000
    assert buf.physical_address == buf.device_address


def test_data_lands_in_the_region_file_at_the_device_address(
        sim: Simulator, backend: UdmabufBackend) -> None:
    pusher = allocate(3000, "u1", backend=backend)  # kept: the next buffer is not at offset 0
    pusher[:] = 0xEE
    buf = allocate(16, "u2", backend=backend)
    buf[:] = np.arange(16) * 7
    buf.flush()
    assert buf.device_address != pusher.device_address
    with open(sim.device_path("udmabuf0"), "rb") as f:
        f.seek(buf.device_address - 0x7E000000)
        assert np.array_equal(np.frombuffer(f.read(32), "<u2"), np.arange(16) * 7)
        f.seek(pusher.device_address - 0x7E000000)
        assert f.read(3000) == b"\xee" * 3000


@pytest.mark.parametrize("shape, expected", [(7, (7,)), ((2, 3), (2, 3)), ([4, 1, 2], (4, 1, 2)),
                                             (np.int64(3), (3,)), ((np.uint8(2), 5), (2, 5))])
def test_any_integer_shape_is_accepted(backend: UdmabufBackend, shape: object,
                                       expected: tuple) -> None:
    assert allocate(shape, backend=backend).shape == expected


@pytest.mark.parametrize("dtype", ["u1", "i2", "<u4", ">i8", "f2", "f4", "f8", "c16", "?",
                                   "S7", "U3", "M8[ns]", [("addr", "<u8"), ("len", "<u4")],
                                   ("u4", (2, 2))])
def test_any_fixed_size_dtype_is_accepted(backend: UdmabufBackend, dtype: object) -> None:
    buf = allocate((3,), dtype, backend=backend)
    assert buf.dtype == np.dtype(dtype) or buf.dtype == np.dtype(dtype).base


def test_default_dtype_is_u4_like_pynq(backend: UdmabufBackend) -> None:
    assert allocate(4, backend=backend).dtype == np.dtype("u4")


def test_target_selects_the_region_by_name_or_object(backend: UdmabufBackend) -> None:
    assert allocate(4, target="udmabuf1", backend=backend).device_address >= 0x8_0000_0000
    region = pynq_alloc.regions(backend)[1]
    assert allocate(4, target=region, backend=backend).region.name == "udmabuf1"
    assert allocate(4, backend=backend).region.name == "udmabuf0"


def test_buffers_are_page_aligned_by_default_and_honour_align(backend: UdmabufBackend) -> None:
    import mmap
    keep = [allocate(10, "u1", backend=backend) for _ in range(3)]  # alive: each a new block
    assert len({b.device_address for b in keep}) == 3
    assert [b.device_address % mmap.PAGESIZE for b in keep] == [0, 0, 0]
    keep.append(allocate(10, "u1", align=1 << 20, backend=backend))
    assert keep[-1].device_address % (1 << 20) == 0 and keep[-1].device_address > 0x7E000000


def test_out_of_memory_states_request_largest_free_block_and_region_size(
        backend: UdmabufBackend) -> None:
    keep = [allocate(4 << 20, "u1", backend=backend) for _ in range(3)]
    with pytest.raises(MemoryError) as info:
        allocate(8 << 20, "u1", backend=backend)
    message = str(info.value)
    assert "8388608 bytes" in message and "largest free block is 4194304" in message
    assert "16777216" in message
    assert isinstance(info.value, OutOfMemoryError)
    del keep


def test_freed_memory_is_reused(backend: UdmabufBackend) -> None:
    for _ in range(100):
        buf = allocate(4 << 20, "u1", backend=backend)
        buf.freebuffer()
    assert backend.handle(backend.region()).ledger.stats().used == 0


def test_environment_selects_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynq_alloc import backends
    monkeypatch.setattr(backends, "_backends", {})
    monkeypatch.setenv("PYNQ_ALLOC_BACKEND", "sim")
    assert allocate(4).region.name == "udmabuf0"


@pytest.mark.parametrize("align", [1, 2, 64, 1 << 16])
def test_any_power_of_two_alignment_is_accepted(backend: UdmabufBackend, align: int) -> None:
    buf = allocate(10, "u1", align=align, backend=backend)
    assert buf.device_address % align == 0
