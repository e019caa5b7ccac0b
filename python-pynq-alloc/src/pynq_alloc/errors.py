"""One exception hierarchy: every error says what was wrong and what to do about it.

Each class also derives from the built-in exception a numpy/PYNQ user would
catch for the same problem (``MemoryError``, ``PermissionError``, ``ValueError``,
``TypeError``...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import errno as _errno
from typing import Optional


class PynqAllocError(Exception):
    """Base class of every error raised by pynq_alloc."""


class InvalidArgumentError(PynqAllocError, ValueError):
    """An argument has the right type but a value that cannot be honoured."""


class InvalidTypeError(PynqAllocError, TypeError):
    """An argument has a type that allocate() or Buffer cannot use."""


class RegionNotFoundError(PynqAllocError, LookupError):
    """The requested memory region (``target=``) does not exist."""


class OutOfMemoryError(PynqAllocError, MemoryError, RuntimeError):
    """The region has no free block large enough for the request.

    Also a ``RuntimeError``: PYNQ raises that when its allocator runs out, and
    PYNQ code catches it (``except RuntimeError``)."""


class BufferFreedError(PynqAllocError, ValueError):
    """The buffer (or the buffer a view belongs to) was freed."""


class DeviceError(PynqAllocError, OSError):
    """The driver's files could not be used; carries ``errno`` and ``filename``."""

    def __init__(self, message: str, err: int = 0, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.errno = err
        self.filename = path
        self.strerror = message
        self.message = message

    def __str__(self) -> str:
        return self.message


class DriverNotFoundError(DeviceError, FileNotFoundError):
    """No u-dma-buf region is present: module not loaded or no node in the device tree."""


class DevicePermissionError(DeviceError, PermissionError):
    """The device or its sync files are not accessible to this user."""


class DriverInterfaceError(DeviceError):
    """The driver's files hold something this version of pynq_alloc cannot interpret."""


class SyncError(DeviceError):
    """A cache flush/invalidate request was refused by the driver."""


class LedgerError(DeviceError):
    """The cross-process ownership ledger of a region is unusable."""


def device_error(exc: OSError, what: str, path: str) -> DeviceError:
    """Turn an ``OSError`` from a driver file into the matching error of our hierarchy."""
    err = exc.errno or 0
    if err in (_errno.EACCES, _errno.EPERM):
        return DevicePermissionError(
            f"{what}: permission denied on {path}. Add this user to the group that owns it "
            f"(the pynq-alloc udev rule uses group 'dma': `sudo usermod -aG dma $USER`, then "
            f"log in again), or run as root.",
            err,
            path,
        )
    if err == _errno.ENOENT:
        return DriverNotFoundError(
            f"{what}: {path} does not exist. Is the u-dma-buf module loaded (`modprobe "
            f"u-dma-buf`) and does the device tree describe the region?",
            err,
            path,
        )
    return DeviceError(f"{what}: {path}: {exc.strerror or exc}", err, path)


def a_type(value: object) -> str:
    """'an int', 'a list': the type of a bad argument, as a message says it."""
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"
