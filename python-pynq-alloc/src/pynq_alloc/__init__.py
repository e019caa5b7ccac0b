"""pynq_alloc: PYNQ-style DMA buffers (physically contiguous numpy arrays) via u-dma-buf.

>>> from pynq_alloc import allocate
>>> buf = allocate(shape=(5,), dtype='u4')
>>> buf[:] = range(5)
>>> buf.flush()
>>> hex(buf.device_address)  # hand this to the DMA engine in the PL
"""

from __future__ import annotations

from typing import Any, List, Union

from .allocate import allocate
from .backends import get_backend
from .backends.udmabuf import Region, RegionInfo, UdmabufBackend
from .buffer import Buffer, FramePointer
from .dmabuf import DmaBuf, from_dmabuf
from .errors import (
    BufferFreedError,
    DeviceError,
    DevicePermissionError,
    DriverInterfaceError,
    DriverNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
    LedgerError,
    OutOfMemoryError,
    PynqAllocError,
    RegionNotFoundError,
    SyncError,
)
from .share import ShareHandle

__version__ = "0.1.0"

__all__ = [
    "Buffer",
    "BufferFreedError",
    "DeviceError",
    "DevicePermissionError",
    "DmaBuf",
    "DriverInterfaceError",
    "DriverNotFoundError",
    "FramePointer",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LedgerError",
    "OutOfMemoryError",
    "PynqAllocError",
    "Region",
    "RegionInfo",
    "RegionNotFoundError",
    "ShareHandle",
    "SyncError",
    "__version__",
    "allocate",
    "from_dmabuf",
    "regions",
]


def regions(backend: Union[str, UdmabufBackend, Any, None] = None) -> List[Region]:
    """Every memory region the backend offers (``udmabuf0`` first), with its usage by all
    the processes that share it (``used``, ``free``, ``largest_free``, ``buffers``)."""
    found = get_backend(backend)
    result = []
    for info in found.regions():
        stats = found.handle(info).ledger.stats()
        result.append(Region(**vars(info), used=stats.used, free=stats.free,
                             largest_free=stats.largest_free, buffers=stats.blocks))
    return result
