"""dma-buf export on the real driver: Buffer.export() gives a PRIME dma-buf of exactly the
buffer's pages, mappable and synced with DMA_BUF_IOCTL_SYNC, that another process of
ours turns back into a Buffer with the same device address (from_dmabuf), holding the
block in the ledger."""
from __future__ import annotations

import errno
import fcntl
import glob
import mmap
import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import time
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


# -- a second kernel driver imports the fd: V4L2's vivid test driver ----------------------------
# linux/videodev2.h on a 64-bit kernel: the request numbers and the layouts these tests use.
VIDIOC_G_FMT = 0xC0D05604         # _IOWR('V', 4, struct v4l2_format), 208 bytes
VIDIOC_REQBUFS = 0xC0145608       # _IOWR('V', 8, struct v4l2_requestbuffers), 20 bytes
VIDIOC_QBUF = 0xC058560F          # _IOWR('V', 15, struct v4l2_buffer), 88 bytes
VIDIOC_DQBUF = 0xC0585611         # _IOWR('V', 17, struct v4l2_buffer)
VIDIOC_STREAMON = 0x40045612      # _IOW('V', 18, int)
VIDIOC_STREAMOFF = 0x40045613     # _IOW('V', 19, int)
V4L2_BUF_TYPE_VIDEO_CAPTURE, V4L2_MEMORY_DMABUF = 1, 4
REQBUFS = struct.Struct("<IIIIB3x")
# index, type, bytesused, flags, field, (pad), timestamp 16, timecode 16, sequence, memory,
# m.fd (in an 8-byte union), length, reserved2, request_fd, (pad)
V4L2_BUFFER = struct.Struct("<IIIII4x16s16sIIi4xIIi4x")


def _vivid_capture_node(allocator: int) -> str:
    """Load vivid (one capture node, vb2 allocator 0 vmalloc or 1 dma-contig) and return
    its /dev/videoN; skip where the kernel has no vivid module or this is not root."""
    if os.geteuid() != 0:
        pytest.skip("needs root: loads the vivid module")
    subprocess.run(["modprobe", "-r", "vivid"], capture_output=True)
    done = subprocess.run(["modprobe", "vivid", "n_devs=1", "node_types=0x1",
                           f"allocators={allocator}"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no vivid module in this kernel ({done.stderr.strip()})")
    for _ in range(100):
        for node in sorted(glob.glob("/sys/class/video4linux/video*")):
            with open(f"{node}/name") as f:
                if f.read().strip().endswith("vid-cap") and \
                        os.path.exists(f"/dev/{os.path.basename(node)}"):
                    return f"/dev/{os.path.basename(node)}"
        time.sleep(0.1)
    raise AssertionError("vivid loaded but no vid-cap node appeared in /sys/class/video4linux")


def _v4l2(fd: int, request: int, arg: bytes) -> bytes:
    return fcntl.ioctl(fd, request, arg)  # type: ignore[no-any-return]


@pytest.mark.parametrize("allocator", [0, 1], ids=["vb2-vmalloc", "vb2-dma-contig"])
def test_vivid_streams_a_frame_into_an_exported_buffer(region: Any, allocator: int) -> None:
    _exportable(region)
    node = _vivid_capture_node(allocator)
    fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
    try:
        fmt = bytearray(208)
        struct.pack_into("<I", fmt, 0, V4L2_BUF_TYPE_VIDEO_CAPTURE)
        fmt = bytearray(_v4l2(fd, VIDIOC_G_FMT, bytes(fmt)))
        width, height, _, _, _, sizeimage = struct.unpack_from("<6I", fmt, 8)
        buf = pynq_alloc.allocate(sizeimage, "u1", target=region.name, cacheable=True)
        buf.flush()
        with buf.export() as dmabuf:
            _v4l2(fd, VIDIOC_REQBUFS, REQBUFS.pack(1, V4L2_BUF_TYPE_VIDEO_CAPTURE,
                                                    V4L2_MEMORY_DMABUF, 0, 0))
            qbuf = V4L2_BUFFER.pack(0, V4L2_BUF_TYPE_VIDEO_CAPTURE, 0, 0, 0, b"", b"", 0,
                                    V4L2_MEMORY_DMABUF, dmabuf.fd, dmabuf.size, 0, 0)
            try:
                _v4l2(fd, VIDIOC_QBUF, qbuf)
            except OSError as exc:
                raise AssertionError(
                    f"vivid (allocators={allocator}) refused the u-dma-buf dma-buf at QBUF: "
                    f"{errno.errorcode.get(exc.errno or 0)} {exc.strerror}") from None
            _v4l2(fd, VIDIOC_STREAMON, struct.pack("<i", V4L2_BUF_TYPE_VIDEO_CAPTURE))
            try:
                ready, _, _ = select.select([fd], [], [], 30)
                assert ready, "vivid delivered no frame within 30 s"
                done = V4L2_BUFFER.unpack(_v4l2(fd, VIDIOC_DQBUF, V4L2_BUFFER.pack(
                    0, V4L2_BUF_TYPE_VIDEO_CAPTURE, 0, 0, 0, b"", b"", 0,
                    V4L2_MEMORY_DMABUF, 0, 0, 0, 0)))
            finally:
                _v4l2(fd, VIDIOC_STREAMOFF, struct.pack("<i", V4L2_BUF_TYPE_VIDEO_CAPTURE))
                _v4l2(fd, VIDIOC_REQBUFS, REQBUFS.pack(0, V4L2_BUF_TYPE_VIDEO_CAPTURE,
                                                        V4L2_MEMORY_DMABUF, 0, 0))
        index, _, bytesused = done[:3]
        assert (index, bytesused) == (0, sizeimage), (width, height)
        buf.invalidate()
        # vivid's test pattern (colour bars): the frame is in our memory, not all zero
        assert np.count_nonzero(buf[:sizeimage]) > sizeimage // 4
        buf.freebuffer()
    finally:
        os.close(fd)
        subprocess.run(["modprobe", "-r", "vivid"], capture_output=True)
