"""dma-buf export on the real driver: Buffer.export() gives a PRIME dma-buf of exactly the
buffer's pages, mappable and synced with DMA_BUF_IOCTL_SYNC, that another process of
ours turns back into a Buffer with the same device address (from_dmabuf), holding the
block in the ledger."""
from __future__ import annotations

import mmap
import socket
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pynq_alloc
import pytest
from helpers import in_child

PAGE = mmap.PAGESIZE


def _fdinfo(fd: int) -> dict:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _exportable(region: Any) -> None:
    if region.ioctl_version < 2:
        pytest.skip(f"u-dma-buf {region.driver_version} has no export ioctl")


def test_export_is_a_dma_buf_of_the_buffers_pages(region: Any) -> None:
    _exportable(region)
    with pynq_alloc.allocate(5000, "u1", target=region.name) as buf:
        with buf.export() as dmabuf:
            info = _fdinfo(dmabuf.fd)
            assert info["exp_name"] == region.name  # u-dma-buf names it after the device
            assert int(info["size"]) == dmabuf.size == 2 * PAGE  # 5000 B: whole pages
            assert dmabuf.device_address == buf.device_address
            assert info["name"].startswith("pa:")
        buf.freebuffer()


def test_the_dma_buf_maps_the_same_memory(region: Any) -> None:
    _exportable(region)
    with pynq_alloc.allocate(PAGE, "u1", target=region.name, cacheable=True) as buf:
        buf[:] = 0x11
        buf.flush()
        with buf.export() as dmabuf:
            mm = mmap.mmap(dmabuf.fd, dmabuf.size, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
            view = np.frombuffer(mm, np.uint8)
            dmabuf.sync(start=True)
            assert (view == 0x11).all()
            view[:16] = 0x22
            dmabuf.sync(start=False)
            del view
            mm.close()
        buf.invalidate()
        assert (buf[:16] == 0x22).all() and (buf[16:] == 0x11).all()


def import_and_write(fd: int, value: int) -> dict:
    buf = pynq_alloc.from_dmabuf(fd, (PAGE,), "u1")
    buf[:8] = value
    buf.flush()
    return {"address": buf.device_address, "first": int(buf[100])}


def test_another_process_of_ours_imports_it_at_the_same_address(region: Any) -> None:
    _exportable(region)
    buf = pynq_alloc.allocate(PAGE, "u1", target=region.name)
    buf[:] = 7
    with buf.export() as dmabuf:
        got = in_child(import_and_write, dmabuf.fd, 9)
    assert got == {"address": buf.device_address, "first": 7}
    buf.invalidate()
    assert (buf[:8] == 9).all()
    buf.freebuffer()


RECEIVER = textwrap.dedent("""
    import socket, sys, json, pynq_alloc
    sock = socket.socket(fileno=int(sys.argv[1]))
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    buf = pynq_alloc.from_dmabuf(fds[0], (4096,), "u1")
    print(json.dumps({"address": buf.device_address, "value": int(buf[0])}), flush=True)
    sys.stdin.readline()  # hold the buffer until told
    buf.freebuffer()
""")


def test_a_descriptor_sent_with_send_fds_keeps_the_block_while_the_receiver_holds_it(
        region: Any) -> None:
    _exportable(region)
    here, there = socket.socketpair()
    buf = pynq_alloc.allocate(PAGE, "u1", target=region.name)
    buf[:] = 5
    address = buf.device_address
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(there.fileno())],
                                pass_fds=[there.fileno()], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    there.close()
    with buf.export() as dmabuf:
        socket.send_fds(here, [b"x"], [dmabuf.fd])
        line = receiver.stdout.readline()  # type: ignore[union-attr]
    assert f'"address": {address}' in line and '"value": 5' in line
    buf.freebuffer()  # the export is closed: allowed; the receiver still holds the block
    ledger_used = pynq_alloc.regions()[[r.name for r in pynq_alloc.regions()].index(
        region.name)].used
    assert ledger_used >= PAGE
    receiver.communicate("go\n", timeout=60)
    assert receiver.returncode == 0
    here.close()


def test_freeing_while_an_export_is_open_is_refused(region: Any) -> None:
    _exportable(region)
    buf = pynq_alloc.allocate(PAGE, "u1", target=region.name)
    dmabuf = buf.export()
    with pytest.raises(pynq_alloc.InvalidArgumentError, match="open dma-buf export"):
        buf.freebuffer()
    assert not buf.freed
    dmabuf.close()
    buf.freebuffer()
    assert buf.freed
