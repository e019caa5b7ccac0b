"""The u-dma-buf driver's interface: ``/sys/class/u-dma-buf/<name>/*`` and ``/dev/<name>``.

Everything here follows what the driver (ikwzm/udmabuf, v3 to v5) exposes; see
UDMABUF.md in the repository for the measured facts. Each root path is a
parameter so that the simulator (or a test) can point the backend elsewhere.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from .._platform import CACHE_LINE, PAGE_SIZE, current_pid
from ..errors import (
    DeviceError,
    DriverInterfaceError,
    DriverNotFoundError,
    InvalidArgumentError,
    RegionNotFoundError,
    SyncError,
    device_error,
)

DEFAULT_SYSFS_ROOT = "/sys/class/u-dma-buf"
DEFAULT_DEV_ROOT = "/dev"
DEFAULT_RUN_DIR = "/run/pynq-alloc"

#: Driver majors whose sysfs/ioctl interface this module implements.
SUPPORTED_DRIVER_MAJORS = (3, 4, 5)

if TYPE_CHECKING:
    from ..ledger import Ledger

# ioctls on /dev/<name> (u-dma-buf-ioctl.h, magic 'U').
U_DMA_BUF_IOCTL_SET_SYNC_FOR_CPU = 0x40085505
U_DMA_BUF_IOCTL_SET_SYNC_FOR_DEVICE = 0x40085506

#: Directions of the encoded sync command (bits 3..2).
TO_DEVICE = 1
FROM_DEVICE = 2

# The encoded one-shot sync command has a 32-bit offset (bits 63..32) and a
# size in bits 31..4: one command covers at most this many bytes.
_MAX_SYNC_CHUNK = 1 << 31
_MAX_SYNC_OFFSET = 1 << 32

_PHYS_ADDR = re.compile(r"0x[0-9a-fA-F]{1,16}")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_DECIMAL = re.compile(r"\d+")
_FLAG = re.compile(r"[01]")
_SYNC_MODE = re.compile(r"[0-7]")


class MappingKind:
    """How the CPU sees a mapping, given O_SYNC and the node's ``sync_mode``."""

    CACHED = "cached"
    DEVICE = "device"  # Device-nGnRnE / strongly ordered: no unaligned access, no DC ZVA
    WRITE_COMBINE = "write-combine"
    COHERENT = "dma-coherent"  # pgprot_dmacoherent: Normal non-cacheable on arm64


def mapping_kind(sync_mode: int, o_sync: bool) -> str:
    """The caching of a mapping opened with/without O_SYNC (driver README, sync_mode 0..7)."""
    low = sync_mode & 3
    if sync_mode in (0, 4) or (sync_mode < 4 and not o_sync):
        return MappingKind.CACHED
    return {1: MappingKind.DEVICE, 2: MappingKind.WRITE_COMBINE, 3: MappingKind.COHERENT}[low]


@dataclass(frozen=True)
class RegionInfo:
    """One u-dma-buf device as its sysfs directory describes it."""

    name: str
    size: int
    phys_addr: int
    coherent: bool
    sync_mode: int
    quirk_mmap_mode: int
    driver_version: str
    ioctl_version: int
    sysfs_dir: str
    device_path: str

    @property
    def end(self) -> int:
        return self.phys_addr + self.size


@dataclass(frozen=True)
class Region(RegionInfo):
    """A region with its pool usage (bytes) at the moment :func:`pynq_alloc.regions` ran."""

    used: int = 0
    free: int = 0
    largest_free: int = 0
    buffers: int = 0


def _read_attr(directory: str, attr: str) -> str:
    path = os.path.join(directory, attr)
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError as exc:
        raise device_error(exc, f"cannot read u-dma-buf attribute {attr!r}", path) from exc
    except UnicodeDecodeError as exc:
        raise DriverInterfaceError(
            f"{path} holds non-text bytes; it is not a u-dma-buf attribute", errno.EINVAL, path
        ) from exc


def _parse_int(directory: str, attr: str, base: int, pattern: Optional[re.Pattern[str]] = None,
               optional: bool = False) -> int:
    path = os.path.join(directory, attr)
    if optional and not os.path.exists(path):
        return 0
    text = _read_attr(directory, attr)
    try:
        if pattern is not None and not pattern.fullmatch(text):
            raise ValueError(text)
        return int(text, base)
    except ValueError:
        raise DriverInterfaceError(
            f"{path} holds {text!r}, not a {'hexadecimal address' if base == 16 else 'number'} "
            f"as u-dma-buf writes it; is {directory} really a u-dma-buf device?",
            errno.EINVAL,
            path,
        ) from None


def read_sync_mode(sysfs_dir: str) -> int:
    """The node's current ``sync_mode`` (0..7; writable at run time by root)."""
    return _parse_int(sysfs_dir, "sync_mode", 10, _SYNC_MODE)


def read_region(sysfs_dir: str, dev_root: str) -> RegionInfo:
    """Parse one ``/sys/class/u-dma-buf/<name>`` directory, refusing anything unexpected."""
    name = os.path.basename(sysfs_dir.rstrip("/"))
    version = _read_attr(sysfs_dir, "driver_version")
    match = _VERSION.fullmatch(version)
    if match is None or int(match.group(1)) not in SUPPORTED_DRIVER_MAJORS:
        path = os.path.join(sysfs_dir, "driver_version")
        raise DriverInterfaceError(
            f"u-dma-buf driver version {version!r} (from {path}) is not supported: pynq_alloc "
            f"knows majors {', '.join(map(str, SUPPORTED_DRIVER_MAJORS))}. Install a u-dma-buf "
            f"release in that range (the meta-pynq-alloc recipe pins v5.5.0) or upgrade "
            f"pynq_alloc.",
            errno.EPROTO,
            path,
        )
    phys = _parse_int(sysfs_dir, "phys_addr", 16, _PHYS_ADDR)
    size = _parse_int(sysfs_dir, "size", 10, _DECIMAL)
    if size <= 0:
        path = os.path.join(sysfs_dir, "size")
        raise DriverInterfaceError(
            f"{path} says the region is {size} bytes: the node reserves no memory; give it a "
            f"'size' in the device tree (or the udmabufN= module parameter)", errno.EINVAL, path)
    coherent = _parse_int(sysfs_dir, "dma_coherent", 10, _FLAG, optional=True)
    sync_mode = read_sync_mode(sysfs_dir)
    quirk = _parse_int(sysfs_dir, "quirk_mmap_mode", 10, _DECIMAL, optional=True)
    ioctl_version = _parse_int(sysfs_dir, "ioctl_version", 10, _DECIMAL, optional=True)
    return RegionInfo(
        name=name,
        size=size,
        phys_addr=phys,
        coherent=bool(coherent),
        sync_mode=sync_mode,
        quirk_mmap_mode=quirk,
        driver_version=version,
        ioctl_version=ioctl_version,
        sysfs_dir=sysfs_dir,
        device_path=os.path.join(dev_root, name),
    )


def no_region_message(sysfs_root: str, module_dir: str = "/sys/module/u_dma_buf") -> str:
    """What to do when the driver offers no region, for each kind of image."""
    if sysfs_root != DEFAULT_SYSFS_ROOT:
        state = ("the u-dma-buf kernel module is not loaded, or it created no device (no "
                 "'ikwzm,u-dma-buf' node in the device tree, no udmabufN= module parameter)")
    elif os.path.isdir(module_dir):
        state = ("the u-dma-buf module is loaded but created no device: the device tree has "
                 "no 'ikwzm,u-dma-buf' node (or its probe failed: see `dmesg | grep u-dma-buf`), "
                 "and no udmabufN= module parameter was given")
    else:
        state = ("the u-dma-buf kernel module is not loaded (and without it the device tree's "
                 "'ikwzm,u-dma-buf' nodes give no device)")
    return (
        f"no u-dma-buf region found under {sysfs_root}: {state}. To fix it: "
        f"on an image built with the meta-pynq-alloc Yocto layer, `modprobe u-dma-buf` and "
        f"check that the board's device tree has the layer's pools (`pynq-alloc info` "
        f"diagnoses both); on Debian or Ubuntu, install linux-headers-$(uname -r) and "
        f"pynq-alloc's u-dma-buf-dkms and pynq-alloc-board packages (built from the pynq-alloc "
        f"repository by `make debs`; they build, load and open the driver to group dma); "
        f"on any other image, build and load u-dma-buf "
        f"(https://github.com/ikwzm/udmabuf); then either add a reserved-memory pool and an "
        f"'ikwzm,u-dma-buf' node to the device tree, or create a region with no device-tree "
        f"change: `modprobe u-dma-buf udmabuf0=16777216` (16 MiB taken from CMA: the kernel's "
        f"cma= must be larger). To try pynq_alloc without hardware, set "
        f"PYNQ_ALLOC_BACKEND=sim."
    )


def _natural_key(name: str) -> Tuple[str, int]:
    match = re.fullmatch(r"(.*?)(\d*)", name)
    assert match is not None
    return match.group(1), int(match.group(2) or -1)


def encode_sync(offset: int, size: int, direction: int) -> int:
    """The driver's one-shot sync command: offset<<32 | size (16-byte units) | dir<<2 | 1."""
    return (offset << 32) | (size & 0xFFFFFFF0) | (direction << 2) | 1


def sync_commands(offset: int, size: int, direction: int, region_size: int) -> List[int]:
    """Encoded commands that sync ``[offset, offset+size)`` rounded out to whole cache lines.

    The range is clipped to the region (the driver refuses offset+size > size with
    EINVAL) and split where one command's 32-bit fields cannot express it.
    """
    start = offset - offset % CACHE_LINE
    end = min(-(-(offset + size) // CACHE_LINE) * CACHE_LINE, region_size)
    commands = []
    while start < end:
        if start >= _MAX_SYNC_OFFSET:
            raise SyncError(
                f"cannot sync offset {start:#x}: the driver's one-shot sync command holds a "
                f"32-bit offset, so bytes beyond 4 GiB of a region cannot be synced this way. "
                f"Use a region smaller than 4 GiB (split it into several u-dma-buf nodes).",
                errno.EOVERFLOW,
            )
        chunk = min(end - start, _MAX_SYNC_CHUNK)
        commands.append(encode_sync(start, -(-chunk // 16) * 16, direction))
        start += chunk
    return commands


class RegionHandle:
    """This process's access to one region: its mappings, its sync channel, its ledger.

    A region is mapped once per process and caching mode (cached, or O_SYNC), and
    the mapping stays for as long as any buffer of it may exist.
    """

    def __init__(self, backend: UdmabufBackend, region: RegionInfo) -> None:
        self.backend = backend
        self.region = region
        self.pid = current_pid()
        self._lock = threading.Lock()
        self._mappings: Dict[bool, Tuple[int, mmap.mmap, str, int]] = {}
        self._sync_fds: Dict[int, int] = {}
        self._use_ioctl = region.ioctl_version >= 2
        self._ledger: Optional[Ledger] = None
        #: number of sync system calls issued (the benchmark and tests read it)
        self.sync_calls = 0
        #: blocks of this region alive in this process (Block keeps it up to date)
        self.live_blocks = 0

    # -- mapping ---------------------------------------------------------------
    def mapping(self, cacheable: bool) -> Tuple[mmap.mmap, str, int]:
        """The region mapped MAP_SHARED: (mapping, caching kind, its virtual address).

        On a dma-coherent region the device snoops the CPU caches, so the cached
        mapping already needs no flush: it serves ``cacheable=False`` too (and is
        faster than any uncached one)."""
        if self.region.coherent:
            cacheable = True
        found = self._mappings.get(cacheable)
        if found is None:
            with self._lock:
                found = self._mappings.get(cacheable)
                if found is None:
                    found = self._map(cacheable)
                    self._mappings[cacheable] = found
        return found[1], found[2], found[3]

    def _map(self, cacheable: bool) -> Tuple[int, mmap.mmap, str, int]:
        region = self.region
        # sync_mode is writable at run time and fixes the caching at mmap time: re-read it.
        sync_mode = read_sync_mode(region.sysfs_dir)
        kind = mapping_kind(sync_mode, o_sync=not cacheable)
        mode_path = os.path.join(region.sysfs_dir, "sync_mode")
        # cacheable=False is allocate()'s default (PYNQ's): say so, since most callers
        # never wrote it.
        what = "cacheable=False (allocate()'s default, as in PYNQ)"
        fix = (f"Set sync-mode = <2> (write-combine) in the region's device-tree node (the "
               f"meta-pynq-alloc udev rule sets it when the device appears), or as root "
               f"`echo 2 > {mode_path}`")
        if kind == MappingKind.DEVICE:
            raise InvalidArgumentError(
                f"region {region.name} has sync_mode {sync_mode}: "
                f"{what if not cacheable else 'every mapping'} would be Device memory "
                f"(nGnRnE), where numpy's unaligned accesses and glibc's memset fault on arm. "
                + fix
                + ("; or allocate with cacheable=True and flush()/invalidate() around DMA."
                   if not cacheable else ".")
            )
        if not cacheable and kind == MappingKind.CACHED:
            raise InvalidArgumentError(
                f"{what} cannot be honoured on region {region.name}: its sync_mode "
                f"{sync_mode} keeps the CPU cache on even with O_SYNC, so data would need "
                f"flush()/invalidate() after all. {fix}; or allocate with cacheable=True and "
                f"use flush()/invalidate()."
            )
        flags = os.O_RDWR | os.O_CLOEXEC | (0 if cacheable else os.O_SYNC)
        try:
            fd = os.open(region.device_path, flags)
        except OSError as exc:
            what = f"cannot open region {region.name}"
            raise device_error(exc, what, region.device_path) from exc
        length = -(-region.size // PAGE_SIZE) * PAGE_SIZE
        try:
            # MAP_SHARED only: a private mapping of u-dma-buf hits a kernel BUG() on first touch.
            mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            raise device_error(exc, f"cannot map region {region.name}", region.device_path) from exc
        address = int(np.frombuffer(mm, np.uint8, 1).__array_interface__["data"][0])
        return fd, mm, kind, address

    def device_fd(self) -> int:
        """A descriptor of /dev/<name> (for ioctls): the one behind any existing mapping."""
        for fd, _, _, _ in self._mappings.values():
            return fd
        self.mapping(True)
        return self._mappings[True][0]

    # -- cache maintenance -----------------------------------------------------
    def sync(self, offset: int, size: int, direction: int) -> None:
        """Clean (TO_DEVICE) or invalidate (FROM_DEVICE) the CPU cache for a byte range.

        One system call per command: the ``SET_SYNC_FOR_*`` ioctl where the driver
        has it (any user who may open the device may use it), else the sysfs
        ``sync_for_*`` file (writable by root only, unless a udev rule opens it).
        Neither touches the driver's stored sync fields, which every process shares.
        """
        for command in sync_commands(offset, size, direction, self.region.size):
            if self._use_ioctl and self._sync_ioctl(command, direction):
                continue
            self._sync_sysfs(command, direction)

    def _sync_ioctl(self, command: int, direction: int) -> bool:
        request = (U_DMA_BUF_IOCTL_SET_SYNC_FOR_DEVICE if direction == TO_DEVICE
                   else U_DMA_BUF_IOCTL_SET_SYNC_FOR_CPU)
        try:
            self.sync_calls += 1
            self.backend.ioctl(self.device_fd(), request, struct.pack("<Q", command))
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.ENOSYS, errno.EOPNOTSUPP):
                # Not a u-dma-buf character device that knows this ioctl (an old driver,
                # or the simulator's plain file): use the sysfs files from now on.
                self._use_ioctl = False
                return False
            raise self._sync_error(exc, command, self.region.device_path) from exc
        return True

    def _sync_sysfs(self, command: int, direction: int) -> None:
        attr = "sync_for_device" if direction == TO_DEVICE else "sync_for_cpu"
        path = os.path.join(self.region.sysfs_dir, attr)
        fd = self._sync_fds.get(direction)
        if fd is None:
            try:
                # O_NONBLOCK only for the open: it never blocks on a sysfs file.
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            except OSError as exc:
                raise device_error(exc, f"cannot open the sync file of {self.region.name}",
                                   path) from exc
            self._sync_fds[direction] = fd
        try:
            self.sync_calls += 1
            os.write(fd, b"%#x\n" % command)
        except OSError as exc:
            raise self._sync_error(exc, command, path) from exc

    def _sync_error(self, exc: OSError, command: int, path: str) -> DeviceError:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return device_error(exc, f"cache sync of region {self.region.name} refused", path)
        return SyncError(
            f"cache sync command {command:#018x} on region {self.region.name} failed: "
            f"{exc.strerror}. The range must lie inside the region ({self.region.size} bytes).",
            exc.errno or 0,
            path,
        )

    # -- ownership -------------------------------------------------------------
    @property
    def ledger(self) -> Ledger:
        """The region's cross-process ledger, opened on first use."""
        if self._ledger is None:
            with self._lock:
                if self._ledger is None:
                    from ..ledger import Ledger  # ledger imports this module

                    self._ledger = Ledger.open(self)
        return self._ledger

    def close(self) -> None:
        """Unmap and close everything; refuses (BufferError) while buffers use a mapping."""
        if self.live_blocks:
            # numpy keeps no buffer export on the mapping: unmapping now would leave
            # those arrays pointing at unmapped memory (a segfault on next access).
            raise BufferError(
                f"{self.live_blocks} buffer(s) of region {self.region.name} are still alive in "
                f"this process: free them (freebuffer()/del, and their views) before closing")
        for key, (fd, mm, _, _) in list(self._mappings.items()):
            mm.close()  # raises BufferError while numpy arrays still export it
            os.close(fd)
            del self._mappings[key]
        for fd in self._sync_fds.values():
            os.close(fd)
        self._sync_fds.clear()
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def _system_ioctl(fd: int, request: int, arg: Union[bytes, bytearray]) -> Any:
    # fcntl.ioctl looked up at each call, so that a test may wrap it (tests/target does)
    return fcntl.ioctl(fd, request, arg)


def _system_fdinfo(fd: int) -> str:
    with open(f"/proc/self/fdinfo/{fd}", encoding="utf-8", errors="replace") as f:
        return f.read()


class UdmabufBackend:
    """Regions of the u-dma-buf driver under ``sysfs_root``, devices under ``dev_root``."""

    name = "udmabuf"

    def __init__(self, sysfs_root: str = DEFAULT_SYSFS_ROOT, dev_root: str = DEFAULT_DEV_ROOT,
                 run_dir: str = DEFAULT_RUN_DIR,
                 ioctl: Optional[Callable[[int, int, Union[bytes, bytearray]], Any]] = None,
                 fdinfo: Optional[Callable[[int], str]] = None) -> None:
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self.run_dir = run_dir
        #: ioctl(2) on a /dev/<name> descriptor; the simulator passes its emulation of the driver's
        self.ioctl: Callable[[int, int, Union[bytes, bytearray]], Any] = (
            _system_ioctl if ioctl is None else ioctl)
        #: the text of /proc/self/fdinfo/<fd> (OSError when fd is not open), where a dma-buf
        #: shows its size, exporter and name; the simulator adds those of its emulated dma-bufs
        self.fdinfo: Callable[[int], str] = _system_fdinfo if fdinfo is None else fdinfo
        self._regions: Optional[Dict[str, RegionInfo]] = None
        self._handles: Dict[str, RegionHandle] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> UdmabufBackend:
        """The driver's real paths, each overridable by an environment variable."""
        return cls(
            sysfs_root=os.environ.get("PYNQ_ALLOC_SYSFS_ROOT", DEFAULT_SYSFS_ROOT),
            dev_root=os.environ.get("PYNQ_ALLOC_DEV_ROOT", DEFAULT_DEV_ROOT),
            run_dir=os.environ.get("PYNQ_ALLOC_RUN_DIR", DEFAULT_RUN_DIR),
        )

    def __repr__(self) -> str:
        return f"UdmabufBackend(sysfs_root={self.sysfs_root!r}, dev_root={self.dev_root!r})"

    def _discover(self) -> Dict[str, RegionInfo]:
        try:
            names = os.listdir(self.sysfs_root)
        except FileNotFoundError:
            names = []
        except OSError as exc:
            raise device_error(exc, "cannot list u-dma-buf regions", self.sysfs_root) from exc
        if not names:
            raise DriverNotFoundError(no_region_message(self.sysfs_root), errno.ENOENT,
                                      self.sysfs_root)
        names.sort(key=_natural_key)
        return {n: read_region(os.path.join(self.sysfs_root, n), self.dev_root) for n in names}

    def regions(self, refresh: bool = False) -> List[RegionInfo]:
        """Every region, in the driver's numbering order (udmabuf0, udmabuf1, ...)."""
        if self._regions is None or refresh:
            self._regions = self._discover()
        return list(self._regions.values())

    def region(self, name: Optional[str] = None) -> RegionInfo:
        """The region called ``name``, or the first one."""
        regions = self.regions()
        if name is None:
            return regions[0]
        assert self._regions is not None
        found = self._regions.get(name)
        if found is None:
            regions = self.regions(refresh=True)
            found = self._regions.get(name)
        if found is None:
            raise RegionNotFoundError(
                f"no memory region named {name!r}: this board has "
                f"{', '.join(repr(r.name) for r in regions)}. Pass one of those as target=, or "
                f"add a u-dma-buf node with device-name = \"{name}\" to the device tree."
            )
        return found

    def handle(self, region: RegionInfo) -> RegionHandle:
        """This process's handle of ``region``: one per device in the process, whichever
        backend object asks (so a region is mapped once); a forked child makes its own."""
        found = self._handles.get(region.name)
        if found is not None and found.pid == current_pid() and found.region is region:
            return found
        key = (region.sysfs_dir, region.device_path, self.run_dir)
        with _process_handles_lock:
            found = _process_handles.get(key)
            if found is None or found.pid != current_pid() or found.region != region:
                found = RegionHandle(self, region)
                _process_handles[key] = found
            self._handles[region.name] = found
        return found

    def close(self) -> None:
        """Close this process's handles of these regions (refused while buffers live)."""
        with _process_handles_lock:
            for name, handle in list(self._handles.items()):
                if handle.pid == current_pid():
                    handle.close()
                    for key, shared in list(_process_handles.items()):
                        if shared is handle:
                            del _process_handles[key]
                del self._handles[name]


_process_handles_lock = threading.Lock()
_process_handles: Dict[Tuple[str, str, str], RegionHandle] = {}
