"""PYNQ drop-in: buffers used the way PYNQ's drivers use them, on a register model of the AXI DMA.

The channel code below is ours, written from PG021 and from what PYNQ's DMA and
video drivers are documented to do with buffers (flush before MM2S, invalidate
after S2MM, descriptors in a buffer allocated with ``target=<the Overlay's
Device>``, frames recycled through a cache with ``pointer=``/``cache=``). The
model moves bytes through its own mapping of the simulated memory, so a test
sees what a device would.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any, List, Optional

import numpy as np
import pytest
from axidma_model import (
    ADDR,
    ADDR_MSB,
    CTRL_EOF,
    CTRL_SOF,
    CURDESC,
    CURDESC_MSB,
    CYCLIC,
    DESC_SIZE,
    DMACR,
    DMASR,
    ERR_IRQ,
    HALTED,
    IDLE,
    LENGTH,
    RS,
    S2MM,
    STS_CMPLT,
    TAILDESC,
    TAILDESC_MSB,
    AxiDma,
    PhysicalMemory,
)
from pynq_alloc import (
    Buffer,
    BufferFreedError,
    FramePointer,
    InvalidArgumentError,
    InvalidTypeError,
    OutOfMemoryError,
    allocate,
)
from pynq_alloc.backends.sim import SimRegion, Simulator
from pynq_alloc.backends.udmabuf import FROM_DEVICE, TO_DEVICE, UdmabufBackend

LOW = SimRegion("udmabuf0", 16 << 20, 0x7E000000)
HIGH = SimRegion("udmabuf1", 16 << 20, 0x8_4000_0000)  # above 4 GiB, not coherent


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator([LOW, HIGH], record_syncs=True) as simulator:
        yield simulator


@pytest.fixture
def memory(sim: Simulator) -> Iterator[PhysicalMemory]:
    mem = PhysicalMemory(sim)
    yield mem
    mem.close()


class PynqDeviceShape:
    """Looks like pynq.Device (an Overlay's ``.device``): ``allocate`` and ``default_memory``."""

    def __init__(self) -> None:
        self.default_memory = PynqMemoryShape(self)

    def allocate(self, shape: Any, dtype: Any, **kwargs: Any) -> Any:
        raise AssertionError("pynq_alloc must not call into the PYNQ device")


class PynqMemoryShape:
    """Looks like a PYNQ memory bank (XrtMemory): ``allocate``, ``device``, ``base_address``."""

    def __init__(self, device: PynqDeviceShape) -> None:
        self.device = device
        self.base_address = 0
        self.idx = 0

    def allocate(self, shape: Any, dtype: Any, **kwargs: Any) -> Any:
        raise AssertionError("pynq_alloc must not call into the PYNQ memory object")


# -- a PYNQ-style channel over the model ---------------------------------------------------
class Channel:
    """Direct-register or scatter-gather channel, used as PYNQ's DMA driver uses buffers."""

    def __init__(self, dma: AxiDma, receive: bool, backend: UdmabufBackend,
                 device: Any = None, max_block: int = 1 << 20) -> None:
        self.dma, self.offset, self.receive = dma, S2MM if receive else 0, receive
        self.backend, self.device, self.max_block = backend, device, max_block
        self.active: Optional[Buffer] = None
        self.descriptors: Optional[Buffer] = None
        self.dma.write(self.offset + DMACR, RS)

    def _write64(self, reg: int, address: int) -> None:
        self.dma.write(self.offset + reg, address & 0xFFFFFFFF)
        self.dma.write(self.offset + reg + 4, address >> 32)

    def transfer(self, array: Buffer, start: int = 0, nbytes: int = 0,
                 cyclic: bool = False) -> None:
        nbytes = nbytes or array.nbytes - start
        array.flush()  # the model flushes before both directions (PYNQ 3.1 flushes the
        # send buffer only): a no-op on write-combine, and harmless before a receive
        self.active = array
        address = array.device_address + start
        if not self.dma.sg:
            self._write64(ADDR, address)
            self.dma.write(self.offset + LENGTH, nbytes)
            return
        count = max(2, -(-nbytes // self.max_block))  # PYNQ always uses two or more
        block = -(-nbytes // count)
        self.descriptors = descr = allocate(shape=(count, 16), dtype=np.uint32,
                                            target=self.device, backend=self.backend)
        assert not descr.any(), "descriptors must start zeroed (status words)"
        for i in range(count):
            nxt = descr.device_address + ((i + 1) % count) * DESC_SIZE
            descr[i, 0], descr[i, 1] = nxt & 0xFFFFFFFF, nxt >> 32
            buf = address + i * block
            descr[i, 2], descr[i, 3] = buf & 0xFFFFFFFF, buf >> 32
            length = min(block, nbytes - i * block)
            descr[i, 6] = length | (CTRL_SOF if i == 0 else 0) | (
                CTRL_EOF if i == count - 1 else 0)
        descr.flush()
        self.dma.write(self.offset + DMACR, 0)  # halt to load CURDESC
        self._write64(CURDESC, descr.device_address)
        self.dma.write(self.offset + DMACR, RS | (CYCLIC if cyclic else 0))
        # cyclic: a tail outside the chain, as PG021 asks
        tail = descr.device_address + (count if cyclic else count - 1) * DESC_SIZE
        self._write64(TAILDESC, tail)

    @property
    def idle(self) -> bool:
        status = self.dma.read(self.offset + DMASR)
        assert not status & ERR_IRQ, f"DMA error, DMASR={status:#x}"
        return bool(status & IDLE)

    def wait(self) -> None:
        assert self.idle, "transfer did not complete"
        if self.receive and self.active is not None:
            self.active.invalidate()

    def descriptor_status(self) -> List[int]:
        assert self.descriptors is not None
        self.descriptors.invalidate()
        return [int(word) for word in self.descriptors[:, 7]]


def loopback(sim: Simulator, memory: PhysicalMemory, max_block: int = 1 << 20,
             **model: Any) -> Any:
    dma = AxiDma(memory, **model)
    backend = sim.backend()
    device = PynqDeviceShape()
    send = Channel(dma, False, backend, device, max_block=max_block)
    recv = Channel(dma, True, backend, device)
    return dma, backend, send, recv


# -- simple mode --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, dtype", [((5,), "u4"), ((64, 48), "u2"), ((3, 5, 7), "f8")])
def test_simple_mode_loopback_moves_a_default_buffer(sim: Simulator, memory: PhysicalMemory,
                                                     shape: Any, dtype: str) -> None:
    dma, backend, send, recv = loopback(sim, memory)
    src = allocate(shape=shape, dtype=dtype, backend=backend)
    dst = allocate(shape=shape, dtype=dtype, backend=backend)
    src[:] = np.arange(src.size).reshape(shape)
    recv.transfer(dst)
    send.transfer(src)
    send.wait()
    recv.wait()
    assert np.array_equal(dst, src)
    assert dma.transfers == [("mm2s", src.device_address, src.nbytes),
                             ("s2mm", dst.device_address, dst.nbytes)]
    assert dma.read(S2MM + LENGTH) == src.nbytes


def test_start_and_nbytes_and_views_send_exactly_their_bytes(
        sim: Simulator, memory: PhysicalMemory) -> None:
    _, backend, send, recv = loopback(sim, memory)
    src = allocate(1024, "u1", backend=backend)
    src[:] = np.arange(1024) % 251
    dst = allocate(1024, "u1", backend=backend)
    recv.transfer(dst)
    send.transfer(src, start=100, nbytes=200)
    recv.wait()
    assert np.array_equal(dst[:200], src[100:300]) and not dst[200:].any()
    recv.transfer(dst[512:])  # a view: its own device address
    send.transfer(src[10:20])
    recv.wait()
    assert np.array_equal(dst[512:522], src[10:20])


def test_code_that_never_flushes_is_right_on_a_default_buffer(
        sim: Simulator, memory: PhysicalMemory) -> None:
    """PYNQ's default is write-combine: drivers that write and hand over the address
    without flush() (logictools, arduino_lcd18) stay correct. The buffer's mapping is
    the driver's write-combine one: its descriptor opened with O_SYNC on a region whose
    sync_mode is 2."""
    backend = sim.backend()
    model_fds = set(_fds_of(sim.device_path("udmabuf0")))  # the model's own mapping
    buf = allocate(4096, "u1", backend=backend)
    assert buf.cacheable is False and not buf.coherent
    sim.clear_sync_requests()
    buf[:] = 0x5A
    buf.flush()
    buf.invalidate()
    assert sim.sync_requests() == []  # nothing to maintain on write-combine
    assert memory.read(buf.device_address, 4096) == b"\x5a" * 4096
    flags = [_fd_flags(fd) for fd in set(_fds_of(sim.device_path("udmabuf0"))) - model_fds]
    o_sync = os.O_SYNC & ~os.O_DSYNC  # the bit only O_SYNC sets
    assert flags and all(f & o_sync for f in flags), [oct(f) for f in flags]
    with open(sim.attr_path("udmabuf0", "sync_mode")) as f:
        assert f.read().strip() == "2"


def test_cacheable_true_flushes_what_the_dma_reads_and_invalidates_what_it_wrote(
        sim: Simulator, memory: PhysicalMemory) -> None:
    _, backend, send, recv = loopback(sim, memory)
    src = allocate(300, "u4", backend=backend, cacheable=True)
    dst = allocate(300, "u4", backend=backend, cacheable=True)
    assert src.cacheable and dst.cacheable
    src[:] = np.arange(300)
    sim.clear_sync_requests()
    recv.transfer(dst)
    send.transfer(src)
    recv.wait()
    base = LOW.phys_addr
    requests = [(r.direction, r.offset, r.size) for r in sim.sync_requests()]
    assert (TO_DEVICE, src.device_address - base, 1216) in requests  # 1200 B, whole lines
    assert (FROM_DEVICE, dst.device_address - base, 1216) in requests
    assert np.array_equal(dst, src)


@pytest.mark.parametrize("region, width", [("udmabuf1", 64), ("udmabuf0", 32),
                                           ("udmabuf0", 64)])
def test_addresses_reach_the_engine_at_32_and_64_bits(
        sim: Simulator, memory: PhysicalMemory, region: str, width: int) -> None:
    dma, backend, send, recv = loopback(sim, memory, address_width=width)
    src = allocate(256, "u1", target=region, backend=backend)
    dst = allocate(256, "u1", target=region, backend=backend)
    src[:] = np.arange(256)
    recv.transfer(dst)
    send.transfer(src)
    recv.wait()
    assert np.array_equal(dst, src)
    assert (dma.read(ADDR_MSB) << 32 | dma.read(ADDR)) == src.device_address
    assert (src.device_address >= 1 << 32) == (region == "udmabuf1")


def test_a_32_bit_engine_cannot_reach_a_buffer_above_4_gib(
        sim: Simulator, memory: PhysicalMemory) -> None:
    """The model is not lenient: the high word really matters."""
    dma, backend, send, _ = loopback(sim, memory, address_width=32)
    src = allocate(64, "u1", target="udmabuf1", backend=backend)
    send.transfer(src)
    assert dma.read(DMASR) & (ERR_IRQ | HALTED)


# -- scatter-gather -------------------------------------------------------------------------
def test_scatter_gather_with_descriptors_allocated_on_the_overlays_device(
        sim: Simulator, memory: PhysicalMemory) -> None:
    _, backend, send, recv = loopback(sim, memory, scatter_gather=True, address_width=64,
                                      max_block=1000)
    src = allocate(5000, "u1", target="udmabuf1", backend=backend)
    dst = allocate(5000, "u1", target="udmabuf1", backend=backend)
    src[:] = np.arange(5000) % 253
    recv.transfer(dst)
    send.transfer(src)
    send.wait()
    recv.wait()
    assert np.array_equal(dst, src)
    assert send.descriptors is not None and send.descriptors.region.name == "udmabuf0"
    sent = send.descriptor_status()
    assert len(sent) == 5 and all(s & STS_CMPLT and s & 0x3FFFFFF == 1000 for s in sent)
    received = recv.descriptor_status()
    assert received[0] & CTRL_SOF and received[-1] & CTRL_EOF
    assert sum(s & 0x3FFFFFF for s in received) == 5000


def test_cyclic_mode_repeats_the_ring_until_stopped(sim: Simulator,
                                                    memory: PhysicalMemory) -> None:
    dma, backend, send, recv = loopback(sim, memory, scatter_gather=True, address_width=64,
                                        cyclic_rounds=3)
    src = allocate(128, "u1", backend=backend)
    src[:] = np.arange(128)
    send.transfer(src, cyclic=True)
    assert len(dma.stream) == 3 and all(p == src.tobytes() for p in dma.stream)
    assert not dma.read(DMASR) & IDLE  # cyclic never completes by itself
    dma.write(DMACR, 0)
    assert dma.read(DMASR) & HALTED
    assert dma.read(CURDESC_MSB) << 32 | dma.read(CURDESC) != 0
    assert dma.read(TAILDESC_MSB) << 32 | dma.read(TAILDESC) == (
        send.descriptors.device_address + 2 * DESC_SIZE)  # type: ignore[union-attr]
    del recv


# -- zero-filled buffers ----------------------------------------------------------------------
def test_a_reused_block_reads_zero_to_the_cpu_and_to_the_device(
        sim: Simulator, memory: PhysicalMemory) -> None:
    backend = sim.backend()
    for cacheable in (False, True):
        old = allocate(8192, "u1", backend=backend, cacheable=cacheable)
        address = old.device_address
        old[:] = 0xEE
        old.flush()
        old.freebuffer()
        new = allocate(8192, "u1", backend=backend, cacheable=cacheable)
        assert new.device_address == address
        assert not new.any()
        assert memory.read(address, 8192) == bytes(8192)
        new.freebuffer()


def test_a_block_another_process_used_reads_zero(sim: Simulator,
                                                 memory: PhysicalMemory) -> None:
    backend = sim.backend()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            buf = allocate(1 << 16, "u1", backend=backend)
            buf[:] = 0xAB
            code = 0 if buf.device_address == LOW.phys_addr else 2
        finally:
            os._exit(code)  # dies holding the block: the ledger reclaims it
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert memory.read(LOW.phys_addr, 16) == b"\xab" * 16  # the child's data is in memory
    buf = allocate(1 << 16, "u1", backend=backend)
    assert buf.device_address == LOW.phys_addr and not buf.any()
    assert memory.read(LOW.phys_addr, 1 << 16) == bytes(1 << 16)


def test_zeroing_syncs_the_block_so_the_zeros_reach_memory(sim: Simulator) -> None:
    """Cached: fill then clean (the zeros leave the cache); write-combine: invalidate
    first (an earlier cached user's dirty lines can never be evicted over them)."""
    backend = sim.backend()
    for cacheable, direction in ((True, TO_DEVICE), (False, FROM_DEVICE)):
        sim.clear_sync_requests()
        buf = allocate(10000, "u1", backend=backend, cacheable=cacheable)
        (request,) = sim.sync_requests()
        assert (request.direction, request.offset, request.size) == (
            direction, buf.device_address - LOW.phys_addr, 10048)
        buf.freebuffer()


# -- the video frame cache ------------------------------------------------------------------
class FrameCache:
    """PYNQ's frame-cache protocol as its video DMA driver uses it (our own code)."""

    def __init__(self, shape: Any, memory: Any, backend: UdmabufBackend, capacity: int = 3,
                 cacheable: int = 0) -> None:
        self.shape, self.memory, self.backend = shape, memory, backend
        self.capacity, self.cacheable = capacity, cacheable
        self.cache: List[Any] = []

    def getframe(self) -> Buffer:
        if self.cache:
            return allocate(shape=self.shape, dtype="u1", cacheable=self.cacheable,
                            pointer=self.cache.pop(), cache=self, target=self.memory,
                            backend=self.backend)
        return allocate(shape=self.shape, dtype=np.uint8, cacheable=self.cacheable,
                        cache=self, target=self.memory, backend=self.backend)

    def return_pointer(self, pointer: Any) -> None:
        if len(self.cache) < self.capacity:
            self.cache.append(pointer)

    def clear(self) -> None:
        self.cache.clear()


def used(backend: UdmabufBackend) -> int:
    return backend.handle(backend.region()).ledger.stats().used


@pytest.mark.parametrize("cacheable", [0, 1])
def test_frames_are_recycled_at_the_same_address_with_their_contents(
        sim: Simulator, cacheable: int) -> None:
    backend = sim.backend()
    cache = FrameCache((48, 64, 3), PynqDeviceShape().default_memory, backend,
                       cacheable=cacheable)
    frame = cache.getframe()
    assert isinstance(frame.pointer, FramePointer) and frame.return_to is cache
    frame[:] = 7
    address = frame.device_address
    frame.freebuffer()
    assert frame.pointer is None and len(cache.cache) == 1
    assert used(backend) == 48 * 64 * 3  # the cache holds the block
    again = cache.getframe()
    assert again.device_address == address and (again == 7).all()  # not zeroed: recycled
    assert not cache.cache
    del again  # garbage collection returns it to the cache too, as PYNQ's __del__ does
    gc.collect()
    assert len(cache.cache) == 1 and used(backend) == 48 * 64 * 3
    cache.clear()
    gc.collect()
    assert used(backend) == 0


def test_a_full_cache_lets_the_frame_go_and_views_of_a_recycled_frame_refuse_use(
        sim: Simulator) -> None:
    backend = sim.backend()
    cache = FrameCache((16, 16), None, backend, capacity=1)
    frames = [cache.getframe() for _ in range(3)]
    view = frames[0][2:4]
    first = frames[0].device_address
    for frame in frames:
        frame.freebuffer()
    assert len(cache.cache) == 1 and used(backend) == 256  # views of the others are gone
    with pytest.raises(BufferFreedError):
        view[0]
    assert cache.getframe().device_address == first
    with pytest.raises(BufferFreedError):
        view.flush()  # the block lives on in a new frame: the old view may not touch it


def test_pointer_misuse_is_refused_and_loses_nothing(sim: Simulator) -> None:
    backend = sim.backend()
    cache = FrameCache((64,), None, backend)
    frame = cache.getframe()
    live_pointer = frame.pointer
    with pytest.raises(InvalidArgumentError, match=r"still in use.*freebuffer"):
        allocate(64, "u1", pointer=live_pointer, backend=backend)
    frame.freebuffer()
    pointer = cache.cache[0]
    with pytest.raises(InvalidArgumentError, match=r"too small.*at most 64"):
        allocate(65, "u1", pointer=pointer, backend=backend)
    with pytest.raises(InvalidArgumentError, match="cacheable=False"):
        allocate(64, "u1", pointer=pointer, cacheable=True, backend=backend)
    recycled = allocate(64, "u1", pointer=pointer, backend=backend)
    with pytest.raises(InvalidArgumentError, match="already used"):
        allocate(64, "u1", pointer=pointer, backend=backend)
    with pytest.raises(InvalidTypeError, match=r"pointer=.*tuple"):
        allocate(64, "u1", pointer=(1, 2, 3), backend=backend)
    with pytest.raises(InvalidTypeError, match="return_pointer"):
        allocate(64, "u1", cache=object(), backend=backend)
    assert used(backend) == 64
    recycled.freebuffer()
    assert used(backend) == 0


# -- target= and errors as PYNQ code expects them --------------------------------------------
def test_pynq_device_and_memory_objects_mean_the_first_region(sim: Simulator) -> None:
    backend = sim.backend()
    device = PynqDeviceShape()
    for target in (device, device.default_memory):
        assert allocate(16, target=target, backend=backend).region.name == "udmabuf0"


class PynqDeviceWithoutOverlay(PynqDeviceShape):
    """pynq.Device's default_memory is a property; before an overlay is downloaded (or
    with several memories active) reading it raises."""

    def __init__(self) -> None:
        pass

    @property
    def default_memory(self) -> Any:  # type: ignore[override]
        raise RuntimeError("Overlay is not downloaded")


def test_a_pynq_device_is_recognised_without_reading_its_default_memory(
        sim: Simulator) -> None:
    buf = allocate(16, target=PynqDeviceWithoutOverlay(), backend=sim.backend())
    assert buf.region.name == "udmabuf0"


@pytest.mark.parametrize("target", [0x7E000000, 3.5, ["udmabuf0"], object(), np.zeros(2), os])
def test_targets_that_can_only_be_a_mistake_are_refused(sim: Simulator, target: Any) -> None:
    with pytest.raises(InvalidTypeError, match=r"region name.*PYNQ Device"):
        allocate(16, target=target, backend=sim.backend())


def test_running_out_is_a_runtime_error_that_names_the_region_with_room(
        sim: Simulator) -> None:
    backend = sim.backend()
    keep = allocate(12 << 20, "u1", backend=backend)
    with pytest.raises(RuntimeError) as info:
        allocate(8 << 20, "u1", backend=backend)
    assert isinstance(info.value, OutOfMemoryError) and isinstance(info.value, MemoryError)
    message = str(info.value)
    assert "region udmabuf0" in message and "target='udmabuf1'" in message
    with pytest.raises(RuntimeError, match=r"whole region is 16777216 bytes.*No other region"):
        allocate(32 << 20, "u1", backend=backend)
    del keep


def _fds_of(path: str) -> List[int]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == path:
                found.append(int(name))
        except OSError:
            continue
    return found


def _fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"no flags line in /proc/self/fdinfo/{fd}")


@pytest.mark.parametrize("sync_mode", [0, 1])
def test_the_default_on_a_region_without_write_combine_says_how_to_fix_it(
        sync_mode: int) -> None:
    """A foreign board whose node keeps the driver's sync_mode: the error names the
    default, the device-tree property and the one-line fix, and nothing is taken."""
    with Simulator([SimRegion("udmabuf0", 1 << 20, 0x7E000000, sync_mode=sync_mode)]) as sim:
        backend = sim.backend()
        with pytest.raises(InvalidArgumentError) as info:
            allocate(16, backend=backend)
        message = str(info.value)
        assert "allocate()'s default" in message and "sync-mode = <2>" in message
        assert "echo 2 >" in message and "cacheable=True" in message
        buf = allocate(16, backend=backend, cacheable=True)  # the documented way out
        assert buf.cacheable
        del buf
        assert backend.handle(backend.region()).ledger.stats().used == 0
