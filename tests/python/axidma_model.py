"""A register-level model of the AXI DMA IP (Xilinx PG021), for driving with PYNQ-style code.

Written from PG021's register and descriptor maps, not from any driver: the
MM2S channel reads memory into an AXI4-Stream, the S2MM channel writes the
stream into memory, and the stream is looped back (MM2S -> FIFO -> S2MM) as in
the usual loopback test design. The model reads and writes *physical* memory
through its own mapping of the simulated regions (never through the CPU's
mapping a Buffer uses), so what it moves is what a device on the bus would see.

Modelled: direct register mode (SA/DA + LENGTH starts a transfer, LENGTH of
S2MM reports the bytes received), scatter-gather mode (CURDESC/TAILDESC, 64-byte
aligned descriptors with NXTDESC, BUFFER_ADDRESS, CONTROL with SOF/EOF, STATUS
written back with Cmplt and the byte count, RXSOF/RXEOF on S2MM), cyclic BD mode
on MM2S, 32- or 64-bit addressing (the _MSB registers read as zero and are
ignored at 32 bits), DMASR Halted/Idle/IOC_Irq (write 1 to clear), decode errors
for addresses outside memory.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

from pynq_alloc.backends.sim import Simulator

# Register offsets of each channel (S2MM = MM2S + 0x30).
DMACR, DMASR, CURDESC, CURDESC_MSB, TAILDESC, TAILDESC_MSB = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14
ADDR, ADDR_MSB, LENGTH = 0x18, 0x1C, 0x28
S2MM = 0x30
# DMACR bits
RS, RESET, CYCLIC, IOC_IRQ_EN = 1 << 0, 1 << 2, 1 << 4, 1 << 12
# DMASR bits
HALTED, IDLE, SG_INCLUDED, DMA_DEC_ERR, SG_DEC_ERR, IOC_IRQ, ERR_IRQ = (
    1 << 0, 1 << 1, 1 << 3, 1 << 6, 1 << 10, 1 << 12, 1 << 14)
# Descriptor words (bytes): NXTDESC, NXTDESC_MSB, BUFFER_ADDRESS, BUFFER_ADDRESS_MSB,
# reserved, reserved, CONTROL, STATUS, APP0..4
DESC_SIZE = 0x40
CTRL_LENGTH_MASK = (1 << 26) - 1
CTRL_EOF, CTRL_SOF = 1 << 26, 1 << 27
STS_CMPLT, STS_DEC_ERR = 1 << 31, 1 << 30


class BusError(Exception):
    """The address is outside every memory the bus decodes (DECERR)."""


class PhysicalMemory:
    """The simulated regions as a device sees them: physical address -> bytes."""

    def __init__(self, sim: Simulator) -> None:
        self._maps: List[Tuple[int, int, mmap.mmap]] = []
        for region in sim.regions.values():
            fd = os.open(sim.device_path(region.name), os.O_RDWR)
            try:
                length = -(-region.size // mmap.PAGESIZE) * mmap.PAGESIZE
                self._maps.append((region.phys_addr, region.size,
                                   mmap.mmap(fd, length, flags=mmap.MAP_SHARED)))
            finally:
                os.close(fd)

    def _find(self, address: int, size: int) -> Tuple[mmap.mmap, int]:
        for base, length, mm in self._maps:
            if base <= address and address + size <= base + length:
                return mm, address - base
        raise BusError(f"no memory at [{address:#x}, +{size:#x})")

    def read(self, address: int, size: int) -> bytes:
        mm, offset = self._find(address, size)
        return mm[offset:offset + size]

    def write(self, address: int, data: bytes) -> None:
        mm, offset = self._find(address, len(data))
        mm[offset:offset + len(data)] = data

    def close(self) -> None:
        for _, _, mm in self._maps:
            mm.close()


@dataclass
class _Channel:
    base: int
    regs: Dict[int, int] = field(default_factory=dict)
    status: int = HALTED
    # S2MM in direct mode: an armed transfer waiting for a packet (address, length)
    armed: Optional[Tuple[int, int]] = None
    # S2MM in SG mode: position in the current packet when it spans descriptors
    descriptors_done: int = 0
    active: bool = False  # SG: TAILDESC written, chain not finished


    def reg(self, offset: int) -> int:
        return self.regs.get(offset, 0)


class AxiDma:
    """One AXI DMA instance; ``read``/``write`` take register offsets as pynq.MMIO does."""

    def __init__(self, memory: PhysicalMemory, scatter_gather: bool = False,
                 address_width: int = 32, cyclic_rounds: int = 3) -> None:
        self.memory = memory
        self.sg = scatter_gather
        self.address_width = address_width
        self.cyclic_rounds = cyclic_rounds
        self.mm2s = _Channel(0)
        self.s2mm = _Channel(S2MM)
        self.stream: Deque[bytes] = deque()  # packets between MM2S and S2MM (TLAST ends one)
        self._partial = bytearray()  # MM2S bytes of a packet whose EOF has not come yet
        self.transfers: List[Tuple[str, int, int]] = []  # (channel, address, bytes) moved

    # -- register interface ------------------------------------------------------------
    def _channel(self, offset: int) -> Tuple[_Channel, int]:
        return (self.s2mm, offset - S2MM) if offset >= S2MM else (self.mm2s, offset)

    def read(self, offset: int) -> int:
        channel, reg = self._channel(offset)
        if reg == DMASR:
            return channel.status | (SG_INCLUDED if self.sg else 0)
        if reg in (CURDESC_MSB, TAILDESC_MSB, ADDR_MSB) and self.address_width <= 32:
            return 0
        return channel.reg(reg)

    def write(self, offset: int, value: int) -> None:
        channel, reg = self._channel(offset)
        value &= 0xFFFFFFFF
        if reg == DMASR:
            channel.status &= ~(value & (IOC_IRQ | ERR_IRQ))  # write 1 to clear
            return
        if reg in (CURDESC_MSB, TAILDESC_MSB, ADDR_MSB) and self.address_width <= 32:
            return
        channel.regs[reg] = value
        if reg == DMACR:
            if value & RESET:
                channel.regs.clear()
                channel.status, channel.armed = HALTED, None
            elif value & RS:
                channel.status &= ~HALTED
                if not self.sg:
                    channel.status |= IDLE
            else:
                channel.status |= HALTED
        elif reg == LENGTH and not self.sg and not channel.status & HALTED:
            self._direct(channel, self._address(channel, ADDR), value & CTRL_LENGTH_MASK)
        elif reg == TAILDESC and self.sg and not channel.status & HALTED:
            channel.status &= ~IDLE
            channel.active = True
            self._scatter_gather(channel)

    def _address(self, channel: _Channel, low: int) -> int:
        high = channel.reg(low + 4) if self.address_width > 32 else 0
        return (high << 32) | channel.reg(low)

    # -- direct register mode -------------------------------------------------------------
    def _direct(self, channel: _Channel, address: int, length: int) -> None:
        channel.status &= ~IDLE
        if channel is self.mm2s:
            try:
                self.stream.append(self.memory.read(address, length))
            except BusError:
                channel.status |= HALTED | DMA_DEC_ERR | ERR_IRQ
                return
            self.transfers.append(("mm2s", address, length))
            self._complete(channel)
        else:
            channel.armed = (address, length)
        self._deliver_direct()

    def _deliver_direct(self) -> None:
        if self.s2mm.armed is None or not self.stream:
            return
        address, length = self.s2mm.armed
        packet = self.stream.popleft()[:length]  # a longer packet is cut (an error in HW)
        try:
            self.memory.write(address, packet)
        except BusError:
            self.s2mm.status |= HALTED | DMA_DEC_ERR | ERR_IRQ
            return
        self.transfers.append(("s2mm", address, len(packet)))
        self.s2mm.armed = None
        self.s2mm.regs[LENGTH] = len(packet)  # bytes really received
        self._complete(self.s2mm)

    def _complete(self, channel: _Channel) -> None:
        channel.status |= IDLE
        channel.active = False
        if channel.reg(DMACR) & IOC_IRQ_EN:
            channel.status |= IOC_IRQ

    # -- scatter-gather mode --------------------------------------------------------------
    def _descriptor(self, address: int) -> List[int]:
        if address % DESC_SIZE:
            raise BusError(f"descriptor at {address:#x} is not 64-byte aligned")
        return list(struct.unpack("<16I", self.memory.read(address, DESC_SIZE)))

    def _scatter_gather(self, channel: _Channel) -> None:
        current = self._address(channel, CURDESC)
        tail = self._address(channel, TAILDESC)
        cyclic = bool(channel.reg(DMACR) & CYCLIC)
        budget = self.cyclic_rounds * 4096 if cyclic else 1 << 20
        first = current
        rounds = 0
        try:
            while budget:
                budget -= 1
                words = self._descriptor(current)
                if channel is self.mm2s:
                    self._mm2s_descriptor(current, words)
                elif not self._s2mm_descriptor(current, words):
                    break  # no data yet: hardware would wait here
                if not cyclic and current == tail:
                    self._complete(channel)
                    break
                current = self._next(words)
                if cyclic and current == first:
                    rounds += 1
                    if rounds == self.cyclic_rounds:
                        break  # the model stops looping; the channel stays busy until stopped
                channel.regs[CURDESC] = current & 0xFFFFFFFF
                channel.regs[CURDESC_MSB] = current >> 32
        except BusError:
            channel.status |= HALTED | SG_DEC_ERR | ERR_IRQ
        if channel is self.mm2s and self.s2mm.active:
            self._scatter_gather(self.s2mm)  # the loopback: S2MM takes what MM2S sent

    def _next(self, words: List[int]) -> int:
        return ((words[1] << 32) if self.address_width > 32 else 0) | words[0]

    def _buffer(self, words: List[int]) -> int:
        return ((words[3] << 32) if self.address_width > 32 else 0) | words[2]

    def _mm2s_descriptor(self, address: int, words: List[int]) -> None:
        length = words[6] & CTRL_LENGTH_MASK
        if words[6] & CTRL_SOF:
            self._partial = bytearray()
        self._partial += self.memory.read(self._buffer(words), length)
        self.transfers.append(("mm2s", self._buffer(words), length))
        if words[6] & CTRL_EOF:
            self.stream.append(bytes(self._partial))
            self._partial = bytearray()
        self.memory.write(address + 0x1C, struct.pack("<I", STS_CMPLT | length))

    def _s2mm_descriptor(self, address: int, words: List[int]) -> bool:
        if not self.stream:
            return False
        length = words[6] & CTRL_LENGTH_MASK
        packet = self.stream[0]
        start = self.s2mm.descriptors_done
        chunk = packet[start:start + length]
        self.memory.write(self._buffer(words), chunk)
        self.transfers.append(("s2mm", self._buffer(words), len(chunk)))
        status = STS_CMPLT | len(chunk)
        if start == 0:
            status |= CTRL_SOF  # RXSOF: same bit position as SOF in CONTROL
        if start + len(chunk) >= len(packet):
            status |= CTRL_EOF  # RXEOF
            self.stream.popleft()
            self.s2mm.descriptors_done = 0
        else:
            self.s2mm.descriptors_done = start + len(chunk)
        self.memory.write(address + 0x1C, struct.pack("<I", status))
        return True
