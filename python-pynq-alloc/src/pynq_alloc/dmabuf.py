"""A buffer's memory as a dma-buf file descriptor, for V4L2, DRM or another process.

u-dma-buf (built with its default ``U_DMA_BUF_EXPORT``, ioctl interface 2)
exports any page-aligned range of a region as a PRIME dma-buf: the
``U_DMA_BUF_IOCTL_EXPORT`` ioctl on ``/dev/<region>`` returns a new descriptor
and the range's physical address. The dma-buf's exporter name (``exp_name`` in
``/proc/<pid>/fdinfo/<fd>``) is the region's device name; pynq_alloc also names
the dma-buf (``DMA_BUF_SET_NAME``) with the block's offset, tag and caching, so
that a process of ours that receives the descriptor can find the block, take a
hold on it in the region's ledger and know its device address.

A foreign importer (a V4L2 or DRM driver) holds the kernel's reference to the
dma-buf, not a ledger hold: the exporting process must keep the buffer and its
:class:`DmaBuf` open until that importer has released the memory (e.g. after
``VIDIOC_STREAMOFF`` and ``VIDIOC_REQBUFS`` with count 0), or the block could be
handed to another allocation while the device still writes into it. Freeing a
buffer while an export of it is open in this process is refused for that reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

import numpy as np

from ._platform import PAGE_SIZE
from .backends import get_backend
from .backends.udmabuf import UdmabufBackend
from .errors import DriverInterfaceError, InvalidArgumentError, device_error

if TYPE_CHECKING:
    from .buffer import Block, Buffer

# u-dma-buf-ioctl.h: _IOWR('U', 10, {u64 flags, size, offset, addr; int fd}) (40 bytes)
U_DMA_BUF_IOCTL_EXPORT = 0xC028550A
_EXPORT_ARGS = struct.Struct("<QQQQi4x")
# linux/dma-buf.h: DMA_BUF_SET_NAME_B = _IOW('b', 1, u64); the argument is the name's address
DMA_BUF_SET_NAME_B = 0x40086201
# linux/dma-buf.h: DMA_BUF_IOCTL_SYNC = _IOW('b', 0, struct dma_buf_sync {u64 flags})
DMA_BUF_IOCTL_SYNC = 0x40086200
DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_END = 1, 2, 4
# DMA_BUF_NAME_LEN is 32 with the NUL: "pa:<offset>:<tag>:<w|c>" fits any region < 4 GiB
_NAME = re.compile(r"pa:([0-9a-f]{1,9}):([0-9a-f]{1,8}):([wc])")


class DmaBuf:
    """An open dma-buf descriptor of one buffer's whole allocation (page-rounded).

    ``fd``/``fileno()`` is what V4L2 (``V4L2_MEMORY_DMABUF``), DRM PRIME or
    ``socket.send_fds`` take. ``close()`` (or ``with``) closes this process's
    descriptor; the buffer may be freed once every export of it is closed.
    """

    def __init__(self, block: Block, fd: int, size: int, address: int) -> None:
        self._block: Optional[Block] = block
        self.fd = fd
        self.size = size
        self.device_address = address
        self.region = block.handle.region.name
        # the backend's ioctl: the system call, or the simulator's emulation of the dma-buf
        self._ioctl = block.handle.backend.ioctl
        block.exports += 1

    def fileno(self) -> int:
        if self._block is None:
            raise ValueError("this dma-buf export is closed")
        return self.fd

    @property
    def closed(self) -> bool:
        return self._block is None

    def sync(self, start: bool, read: bool = True, write: bool = True) -> None:
        """``DMA_BUF_IOCTL_SYNC`` on the descriptor: bracket CPU access made through a
        mapping of the dma-buf itself (``start=True`` before, ``False`` after)."""
        flags = (DMA_BUF_SYNC_READ if read else 0) | (DMA_BUF_SYNC_WRITE if write else 0)
        self._ioctl(self.fileno(), DMA_BUF_IOCTL_SYNC,
                    struct.pack("<Q", flags | (0 if start else DMA_BUF_SYNC_END)))

    def close(self) -> None:
        """Close this process's descriptor (idempotent); importers keep their own."""
        block, self._block = self._block, None
        if block is not None:
            block.exports -= 1
            os.close(self.fd)

    def __enter__(self) -> DmaBuf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return (f"DmaBuf({state}, region={self.region}, device_address="
                f"{self.device_address:#x}, size={self.size})")


def export(block: Block, cacheable: bool) -> DmaBuf:
    """Export ``block`` (grown in place to whole pages first) as a dma-buf."""
    handle = block.handle
    region = handle.region
    if block.offset % PAGE_SIZE:
        raise InvalidArgumentError(
            f"a dma-buf covers whole pages, and this buffer starts {block.offset % PAGE_SIZE} "
            f"bytes into a page: allocate it with the default alignment (align=None, the "
            f"page size {PAGE_SIZE}) to export it")
    size = -(-block.size // PAGE_SIZE) * PAGE_SIZE
    if size != block.size:
        try:
            handle.ledger.grow(block.offset, block.tag, size)
        except InvalidArgumentError:
            raise InvalidArgumentError(
                f"a dma-buf covers whole pages, and the rest of this buffer's last page "
                f"({size - block.size} bytes) is used by another buffer (allocated with "
                f"align < {PAGE_SIZE}): allocate the buffer to export with the default "
                f"alignment, before such small ones, or with a size in whole pages") from None
        block.size = size
    # O_SYNC asks the driver to map the dma-buf like an O_SYNC open of the device: the
    # importer's CPU mapping then has this buffer's caching, never a second kind.
    flags = os.O_RDWR | os.O_CLOEXEC | (0 if cacheable else os.O_SYNC)
    args = bytearray(_EXPORT_ARGS.pack(flags, size, block.offset, 0, -1))
    try:
        handle.backend.ioctl(handle.device_fd(), U_DMA_BUF_IOCTL_EXPORT, args)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.ENOSYS, errno.EOPNOTSUPP):
            raise DriverInterfaceError(
                f"region {region.name} cannot export dma-bufs: its driver "
                f"({region.driver_version}, ioctl interface {region.ioctl_version}) has no "
                f"export ioctl (u-dma-buf "
                f"built without U_DMA_BUF_EXPORT or older than ioctl interface 2). Between "
                f"processes of ours, use buf.share() instead.",
                exc.errno, region.device_path) from None
        raise device_error(exc, f"cannot export a dma-buf of region {region.name}",
                           region.device_path) from exc
    _, _, _, address, fd = _EXPORT_ARGS.unpack(args)
    name = f"pa:{block.offset:x}:{block.tag:x}:{'c' if cacheable else 'w'}".encode() + b"\0"
    # An old kernel without dma-buf names: foreign importers don't need it, ours refuse.
    # The ioctl's argument is the string's address itself (fcntl passes a copy's).
    with contextlib.suppress(OSError):
        handle.backend.ioctl(fd, DMA_BUF_SET_NAME_B, name)
    return DmaBuf(block, fd, size, address)


def _fdinfo(backend: UdmabufBackend, fd: int) -> Dict[str, str]:
    try:
        lines = backend.fdinfo(fd).splitlines()
    except OSError as exc:
        raise InvalidArgumentError(f"fd={fd} is not an open file descriptor ({exc.strerror})"
                                   ) from None
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def from_dmabuf(fd: Union[int, Any], shape: Union[int, Tuple[int, ...]], dtype: Any = "u4",
                backend: Union[str, UdmabufBackend, None] = None) -> Buffer:
    """A :class:`~pynq_alloc.Buffer` over the memory of a dma-buf that pynq_alloc exported
    (in this or another process, e.g. received with ``socket.recv_fds``).

    The buffer maps the region through this process's own mapping and holds the
    block in the ledger (it stays allocated while this buffer lives); ``fd`` stays
    the caller's to close. Refused for dma-bufs of other exporters, whose physical
    address cannot be known.
    """
    from .allocate import _check_dtype, _check_shape
    from .buffer import Buffer

    number = fd.fileno() if hasattr(fd, "fileno") else fd
    if not isinstance(number, int) or isinstance(number, bool):
        raise InvalidArgumentError(f"fd={fd!r} is not a file descriptor: pass an int or an "
                                   f"object with fileno(), such as a DmaBuf")
    found = get_backend(backend)
    info = _fdinfo(found, number)
    if "exp_name" not in info:
        raise InvalidArgumentError(f"fd={number} is not a dma-buf (its fdinfo has no exp_name): "
                                   f"pass a descriptor made by Buffer.export()")
    names = {r.name for r in found.regions()}
    match = _NAME.fullmatch(info.get("name", ""))
    if info["exp_name"] not in names or match is None:
        raise DriverInterfaceError(
            f"fd={number} is a dma-buf exported by {info['exp_name']!r} (name "
            f"{info.get('name', '')!r}), not by pynq_alloc's Buffer.export() on one of "
            f"{sorted(names)}: its physical address is unknown to pynq_alloc",
            errno.EINVAL)
    dims, dt = _check_shape(shape), _check_dtype(dtype)
    size = int(info.get("size", "0"))
    nbytes = int(np.prod(dims)) * dt.itemsize
    if nbytes > size:
        raise InvalidArgumentError(
            f"shape={dims} of {dt} is {nbytes} bytes, more than the dma-buf's {size}: pass "
            f"a shape that fits")
    offset, tag, cacheable = int(match.group(1), 16), int(match.group(2), 16), match.group(3)
    handle = found.handle(found.region(info["exp_name"]))
    return Buffer._held(handle, offset=offset, size=size, tag=tag,
                        cacheable=cacheable == "c", shape=dims, dtype=dt)
