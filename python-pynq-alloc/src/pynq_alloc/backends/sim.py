"""Host simulator of the u-dma-buf driver: the driver's files, laid out in a directory.

The simulator emulates the *driver*, not this library: it writes a sysfs tree
(``sys/class/u-dma-buf/<name>/`` with the driver's attribute names and value
formats, each ending in a newline) and a region file standing in for
``/dev/<name>``, then hands out an ordinary
:class:`~pynq_alloc.backends.udmabuf.UdmabufBackend` pointed at them, so the
code that runs on a board is the code under test on a host.

Emulated faithfully (u-dma-buf v5.5.0, ``u-dma-buf.c`` and ``u-dma-buf-ioctl.h``):
  * discovery, attribute names and formats (``phys_addr`` as ``0x`` + 16 hex
    digits, ``size`` in decimal, ``dma_coherent``, ``sync_mode``, versions...;
    no ``ioctl_version`` file when the driver was built without ioctls);
  * the device's memory: a sparse file of the page-rounded size that every
    process maps ``MAP_SHARED`` (fresh memory reads as zero, as the driver's);
  * the ioctls on ``/dev/<name>``: the backend's ``ioctl`` call is the
    simulator's :meth:`Simulator.ioctl`, which decodes the request number as the
    driver's ``switch`` does (the whole ``_IOC`` number: direction, size, type
    ``'U'``, number; anything else is ENOTTY, as is every request when the
    region says ``ioctl_version`` 0 or is built with ``ioctls=False``), reads
    and writes the argument as ``copy_from_user``/``copy_to_user`` would
    (EFAULT for an integer "pointer" or an argument shorter than the request's
    size), decodes a sync command like ``udmabuf_sync_command_argments()``
    and answers EINVAL where the range leaves the region. GET_DRV_INFO,
    GET_SIZE, GET_DMA_ADDR, GET_SYNC_OWNER, GET_DEV_INFO, GET_SYNC, SET_SYNC and
    SET_SYNC_FOR_CPU/DEVICE are emulated;
  * dma-buf export (EXPORT; ENOTTY with ``SimRegion(export=False)``, as a driver
    built without ``U_DMA_BUF_EXPORT``): the checks of
    ``udmabuf_export_create_entry()`` (EINVAL for an offset or size that is not
    page-aligned, offset + size past the region's size, open flags other than
    O_CLOEXEC | O_SYNC | O_ACCMODE), ``addr`` = ``phys_addr + offset``, and a new
    descriptor with the asked access mode and O_CLOEXEC: a link of the region
    file opened and unlinked under ``dmabuf/`` (the same pages as the region, any
    process may receive it with ``socket.recv_fds``, it outlives the exporter),
    which the simulator knows as a dma-buf through ``/proc/self/fd``. Its fdinfo
    (the backend's ``fdinfo``) shows ``size``, ``exp_name`` and ``name`` as
    ``dma_buf_show_fdinfo()`` does; its ioctls are the dma-buf's
    (``DMA_BUF_IOCTL_SYNC``, recorded as the driver's sync over the export's whole
    range, ``DMA_BUF_SET_NAME``; ENOTTY for the rest);
  * the sysfs cache-sync files: with ``record_syncs=True`` ``sync_for_cpu`` and
    ``sync_for_device`` are FIFOs read by the simulator, which decodes each
    write exactly as the driver does (``kstrtoull(..., 0)``, then ``1`` = use
    the stored ``sync_offset``/``sync_size``/``sync_direction``, otherwise the
    one-shot encoding offset<<32 | size | direction<<2 | 1) and records it,
    flagging requests the driver would refuse with EINVAL. Otherwise they lead
    to ``/dev/null``.

With ``record_syncs=True`` every sync request, through either channel and from
this process or a forked child, is recorded as a :class:`SyncRequest`, and every
ioctl received as an :class:`IoctlCall` (with the errno it was answered with).
A process that builds its own ``UdmabufBackend`` on the simulator's paths (a
``subprocess``) has no ioctl emulation: its ioctls on the plain region file get
the kernel's ENOTTY, so it syncs through the sysfs files, as with an old driver.

Not emulated (checked on the real driver by the on-target suite in QEMU):
  * caching itself (O_SYNC, write-combine, Device memory): the file is always
    coherent memory, so cache-state bugs cannot show up on a host;
  * ``sync_owner`` changes after a sync;
  * where a mapping of an exported descriptor starts: at the region's first byte
    (pass :meth:`Simulator.dmabuf_file_offset` as mmap's offset), where the real
    dma-buf's starts at the buffer's and ends at its size; fdinfo's ``count``;
  * the kernel's refusals on sysfs: EACCES on read-only attributes for root,
    EINVAL returned to the writer of a sync file (it is recorded instead),
    MAP_PRIVATE's BUG().
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import re
import select
import shutil
import struct
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .._platform import PAGE_SIZE
from ..errors import InvalidArgumentError
from .udmabuf import UdmabufBackend, _system_fdinfo

DRIVER_VERSION = "5.5.0"
IOCTL_VERSION = 2


@dataclass(frozen=True)
class SimRegion:
    """One simulated u-dma-buf device."""

    name: str = "udmabuf0"
    size: int = 64 << 20
    phys_addr: int = 0x78000000
    coherent: bool = False
    sync_mode: int = 2  # our device-tree nodes set 2 (the driver's default is 1)
    quirk_mmap_mode: int = 2
    driver_version: str = DRIVER_VERSION
    ioctl_version: int = IOCTL_VERSION
    #: False: /dev/<name> answers every ioctl with ENOTTY (whatever ioctl_version says)
    ioctls: bool = True
    #: False: a driver built without U_DMA_BUF_EXPORT (EXPORT answers ENOTTY)
    export: bool = True


#: udmabuf0 like the QEMU board's non-coherent pool; udmabuf1 above 4 GiB and
#: coherent, as a ZynqMP HPC-port region would be.
DEFAULT_REGIONS = (
    SimRegion("udmabuf0", 64 << 20, 0x78000000),
    SimRegion("udmabuf1", 64 << 20, 0x8_0000_0000, coherent=True),
)


@dataclass(frozen=True)
class SyncRequest:
    """One cache-sync command as the driver would have received it."""

    region: str
    attr: str  # "sync_for_device" or "sync_for_cpu" (for an ioctl: the one it stands for)
    offset: int
    size: int
    direction: int  # 0 bidirectional, 1 to device, 2 from device
    raw: str
    valid: bool  # False where the driver answers EINVAL
    channel: str = "sysfs"  # "sysfs" (a write to the attribute), "ioctl" or "dmabuf"
    request: int = 0  # the ioctl request number (0 for sysfs)


@dataclass(frozen=True)
class SimDmaBuf:
    """What the kernel keeps of one emulated dma-buf (its struct dma_buf and u-dma-buf's
    export entry): the exporting region, the range and the name set on it."""

    id: str
    region: str
    offset: int
    size: int
    force_sync: bool  # O_SYNC asked at export: the entry maps like an O_SYNC open
    name: str = ""


@dataclass(frozen=True)
class IoctlCall:
    """One ioctl the simulated device received, and its answer (0 or an errno)."""

    region: str
    request: int
    errno: int


# The _IOC() layout of the kernel's asm-generic/ioctl.h (arm, arm64, x86, riscv):
# number bits 0..7, type bits 8..15, argument size bits 16..29, direction bits 30..31.
_IOC_WRITE, _IOC_READ = 1, 2
_SIZE_BITS = 14
_MAGIC = ord("U")

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_DRV_INFO = struct.Struct("<Q16s")
_THREE_U64 = struct.Struct("<QQQ")  # dev_info {flags, size, addr}, sync_args {flags, size, offset}
_EXPORT_ARGS = struct.Struct("<QQQQi4x")  # {u64 flags, size, offset, addr; int fd} padded to 8
_EXPORT_SIZE = _EXPORT_ARGS.size
# The flags an export may ask for (udmabuf_export_create_entry: O_CLOEXEC | O_SYNC | O_ACCMODE)
_EXPORT_FD_FLAGS = os.O_CLOEXEC | os.O_SYNC | os.O_ACCMODE

# The dma-buf file's own ioctls (linux/dma-buf.h, magic 'b'): SYNC takes {u64 flags};
# SET_NAME's argument is the name's address (_IOW('b', 1, u32) and the u64 variant 'B').
DMA_BUF_IOCTL_SYNC = 0x40086200
DMA_BUF_SET_NAME_A = 0x40046201
DMA_BUF_SET_NAME_B = 0x40086201
DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_END = 1, 2, 4
DMA_BUF_NAME_LEN = 32  # with the NUL

# Bits of the encoded sync command (driver: SYNC_COMMAND_*_MASK).
_CMD_ARGUMENT_MASK = 0xFFFFFFFFFFFFFFFE
_CMD_SIZE_MASK = 0x00000000FFFFFFF0
_CMD_DIR_MASK = 0x000000000000000C
_U64_MAX = (1 << 64) - 1
_KSTRTOULL = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def _ioc(direction: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | _MAGIC << 8 | nr


# nr -> (name, direction, argument size) of every request in u-dma-buf-ioctl.h
_REQUESTS: Dict[int, Tuple[str, int, int]] = {
    1: ("GET_DRV_INFO", _IOC_READ, _DRV_INFO.size),
    2: ("GET_SIZE", _IOC_READ, _U64.size),
    3: ("GET_DMA_ADDR", _IOC_READ, _U64.size),
    4: ("GET_SYNC_OWNER", _IOC_READ, _U32.size),
    5: ("SET_SYNC_FOR_CPU", _IOC_WRITE, _U64.size),
    6: ("SET_SYNC_FOR_DEVICE", _IOC_WRITE, _U64.size),
    7: ("GET_DEV_INFO", _IOC_READ, _THREE_U64.size),
    8: ("GET_SYNC", _IOC_READ, _THREE_U64.size),
    9: ("SET_SYNC", _IOC_WRITE, _THREE_U64.size),
    10: ("EXPORT", _IOC_READ | _IOC_WRITE, _EXPORT_SIZE),
}
_NAME_OF = {_ioc(d, nr, size): name for nr, (name, d, size) in _REQUESTS.items()}


def _kstrtoull(text: str) -> Optional[int]:
    """The kernel's kstrtoull(text, 0): 0x hex, 0 octal or decimal, at most 2**64 - 1."""
    if _KSTRTOULL.fullmatch(text) is None:
        return None
    if text[:2] in ("0x", "0X"):
        value = int(text, 16)
    else:
        value = int(text, 8) if text.startswith("0") else int(text)
    return value if value <= _U64_MAX else None


def decode_sync_command(command: int, stored: Callable[[], Tuple[int, int, int]],
                        region_size: int) -> Optional[Tuple[int, int, int, bool]]:
    """(offset, size, direction, valid) of a sync command, as udmabuf_sync_command_argments()
    decodes it; None for 0, on which the driver syncs nothing.

    Any bit but bit 0 set: the one-shot encoding; else (command 1) the stored fields.
    Direction 1 is to the device, 2 from the device, anything else bidirectional (0).
    The driver refuses offset + size > region size with EINVAL (valid False)."""
    if command == 0:
        return None
    if command & _CMD_ARGUMENT_MASK:
        offset, size = command >> 32, command & _CMD_SIZE_MASK
        direction = (command & _CMD_DIR_MASK) >> 2
    else:
        offset, size, direction = stored()
    return offset, size, direction if direction in (1, 2) else 0, offset + size <= region_size


class Simulator:
    """The driver's files for ``regions`` under ``root`` (a new temporary dir by default)."""

    def __init__(self, regions: Sequence[SimRegion] = DEFAULT_REGIONS,
                 root: Optional[str] = None, record_syncs: bool = False) -> None:
        self._owns_root = root is None
        self.root = root if root is not None else tempfile.mkdtemp(prefix="pynq-alloc-sim-",
                                                                   dir=_memory_backed_tmp())
        self.sysfs_root = os.path.join(self.root, "sys", "class", "u-dma-buf")
        self.dev_root = os.path.join(self.root, "dev")
        self.run_dir = os.path.join(self.root, "run", "pynq-alloc")
        #: the emulated dma-bufs' state (what the kernel keeps in struct dma_buf), by id
        self.dmabuf_root = os.path.join(self.root, "dmabuf")
        self.regions = {r.name: r for r in regions}
        self.record_syncs = record_syncs
        self._requests: List[SyncRequest] = []
        self._ioctl_calls: List[IoctlCall] = []
        self._lock = threading.Lock()
        # descriptor -> (region, attr or "ioctl", bytes read but not yet a whole line)
        self._channels: Dict[int, Tuple[str, str, bytearray]] = {}
        self._keep_open: List[int] = []
        self._stop_r, self._stop_w = -1, -1
        self._ioctl_log = -1  # write end of the pipe that carries ioctls to the reader
        self._thread: Optional[threading.Thread] = None
        for region in regions:
            self._lay_out(region)
        os.makedirs(self.dmabuf_root, exist_ok=True)
        # By the path /proc/self/fd shows for a descriptor of the device file.
        self._devices: Dict[str, SimRegion] = {
            os.path.realpath(self.device_path(r.name)): r for r in regions}
        if record_syncs:
            self._start_reader()

    # -- the files -------------------------------------------------------------
    def attr_path(self, region: str, attr: str) -> str:
        return os.path.join(self.sysfs_root, region, attr)

    def device_path(self, region: str) -> str:
        """The file standing in for /dev/<region> (read it to check what a device would see)."""
        return os.path.join(self.dev_root, region)

    def write_attr(self, region: str, attr: str, text: str) -> None:
        """Put ``text`` in an attribute, as a driver (or a broken one) would show it.

        Latin-1, so that any byte value can be written (to emulate a corrupt file)."""
        with open(self.attr_path(region, attr), "w", encoding="latin-1") as f:
            f.write(text)

    def _lay_out(self, region: SimRegion) -> None:
        directory = os.path.join(self.sysfs_root, region.name)
        if os.path.isdir(directory):
            return  # a shared simulator directory made by another process
        os.makedirs(directory)
        os.makedirs(self.dev_root, exist_ok=True)
        attrs = {
            "driver_version": region.driver_version,
            "phys_addr": f"0x{region.phys_addr:016x}",
            "size": str(region.size),
            "dma_coherent": str(int(region.coherent)),
            "quirk_mmap_mode": str(region.quirk_mmap_mode),
            "sync_mode": str(region.sync_mode),
            "sync_offset": "0x0",
            "sync_size": str(region.size),
            "sync_direction": "0",
            "sync_owner": "0",
            "dev": f"238:{list(self.regions).index(region.name)}",
        }
        if region.ioctl_version > 0:  # the driver has the attribute only when built with ioctls
            attrs["ioctl_version"] = str(region.ioctl_version)
        for attr, value in attrs.items():
            self.write_attr(region.name, attr, value + "\n")
        for attr in ("sync_for_cpu", "sync_for_device"):
            path = self.attr_path(region.name, attr)
            if self.record_syncs:
                os.mkfifo(path, 0o660)
            else:
                os.symlink(os.devnull, path)
        device = self.device_path(region.name)
        with open(device, "wb") as f:
            f.truncate(-(-region.size // PAGE_SIZE) * PAGE_SIZE)  # sparse: reads as zero
        os.chmod(device, 0o660)

    def _stored(self, region: str, attr: str) -> int:
        with open(self.attr_path(region, attr), encoding="ascii") as f:
            return int(f.read().strip(), 0)

    def _stored_sync(self, region: str) -> Tuple[int, int, int]:
        return (self._stored(region, "sync_offset"), self._stored(region, "sync_size"),
                self._stored(region, "sync_direction"))

    # -- the ioctls of /dev/<name> -------------------------------------------------
    def ioctl(self, fd: int, request: int, arg: Any = 0) -> Any:
        """ioctl(2) as the driver answers it on the simulator's device files (any other
        descriptor goes to the real ioctl); raises OSError with the driver's errno."""
        # One readlink tells the three apart: a device file of ours, an emulated dma-buf
        # (a link of the region file: the same inode, so fstat could not tell it from
        # the device) and any other descriptor, which gets the real ioctl.
        path = self._fd_path(fd)
        region = self._devices.get(path) if path is not None else None
        if region is None:
            dmabuf = self._dmabuf_at(path)
            if dmabuf is None:
                return fcntl.ioctl(fd, request, arg)
            try:
                result = self._answer_dmabuf(fd, dmabuf, request, arg)
            except OSError as exc:
                self._log_ioctl(dmabuf.region, request, arg, exc.errno or 0, dmabuf)
                raise
            self._log_ioctl(dmabuf.region, request, arg, 0, dmabuf)
            return result
        try:
            result = self._answer(region, request, arg)
        except OSError as exc:
            self._log_ioctl(region.name, request, arg, exc.errno or 0)
            raise
        self._log_ioctl(region.name, request, arg, 0)
        return result

    def _answer(self, region: SimRegion, request: int, arg: Any) -> Any:
        name = _NAME_OF.get(request) if region.ioctls and region.ioctl_version > 0 else None
        if name is None or (name == "EXPORT" and not region.export):
            # The driver's switch knows none of it (wrong type, number, direction or size),
            # has no ioctls at all (ioctl_version 0), or was built without dma-buf export.
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        size = (request >> 16) & ((1 << _SIZE_BITS) - 1)
        if isinstance(arg, int) or len(memoryview(arg).cast("B")) < size:
            # An int is a pointer value, and these are no pointers into this process;
            # a short buffer would make copy_from_user read past it.
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        data = bytes(memoryview(arg).cast("B"))
        reply: Optional[bytes] = None
        if name == "GET_DRV_INFO":
            reply = _DRV_INFO.pack(region.ioctl_version & 0xFF, DRIVER_VERSION.encode())
        elif name == "GET_SIZE":
            reply = _U64.pack(region.size)
        elif name == "GET_DMA_ADDR":
            reply = _U64.pack(region.phys_addr)
        elif name == "GET_SYNC_OWNER":
            reply = _U32.pack(self._stored(region.name, "sync_owner"))
        elif name == "GET_DEV_INFO":
            flags = 32 | int(region.coherent) << 9 | (region.quirk_mmap_mode & 7) << 10
            reply = _THREE_U64.pack(flags, region.size, region.phys_addr)
        elif name == "GET_SYNC":
            offset, sync_size, direction = self._stored_sync(region.name)
            flags = (direction & 3) << 2 | (self._stored(region.name, "sync_mode") & 0xFF) << 8 \
                | (self._stored(region.name, "sync_owner") & 1) << 16
            reply = _THREE_U64.pack(flags, sync_size, offset)
        elif name == "SET_SYNC":
            self._set_sync(region, *_THREE_U64.unpack_from(data))
        elif name == "EXPORT":
            reply = self._export(region, data)
        else:  # SET_SYNC_FOR_CPU / SET_SYNC_FOR_DEVICE
            (command,) = _U64.unpack_from(data)
            decoded = decode_sync_command(command, lambda: self._stored_sync(region.name),
                                          region.size)
            if decoded is not None and not decoded[3]:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if reply is None:
            return arg if isinstance(arg, bytes) else 0
        if isinstance(arg, bytes):  # fcntl.ioctl returns a copy of the filled buffer
            return reply + data[len(reply):]
        memoryview(arg).cast("B")[:len(reply)] = reply  # a mutable buffer, filled in place
        return 0

    def _export(self, region: SimRegion, data: bytes) -> bytes:
        """EXPORT as u-dma-buf's udmabuf_export_create_entry() checks it, then a new
        descriptor of the region's memory file that the simulator knows as a dma-buf."""
        flags, size, offset, _, _ = _EXPORT_ARGS.unpack_from(data)
        fd_flags = flags & 0xFFFFFFFF  # GET_U_DMA_BUF_IOCTL_FLAGS_EXPORT_FD_FLAGS: bits 0..31
        if offset % PAGE_SIZE or size % PAGE_SIZE or offset + size > region.size \
                or fd_flags & ~_EXPORT_FD_FLAGS:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        ident = f"{os.getpid()}-{os.urandom(6).hex()}"
        entry = SimDmaBuf(ident, region.name, offset, size, bool(fd_flags & os.O_SYNC))
        self._store_dmabuf(entry)
        path = os.path.join(self.dmabuf_root, ident)
        # A link of the region file, opened and unlinked: the descriptor reaches the
        # region's pages and names the dma-buf ("<path> (deleted)" in /proc/self/fd).
        os.link(self.device_path(region.name), path)
        try:
            fd = os.open(path, fd_flags & os.O_ACCMODE)
        finally:
            os.unlink(path)
        os.set_inheritable(fd, not fd_flags & os.O_CLOEXEC)  # dma_buf_fd(dmabuf, flags)
        return _EXPORT_ARGS.pack(flags, size, offset, region.phys_addr + offset, fd)

    def _store_dmabuf(self, entry: SimDmaBuf) -> None:
        path = os.path.join(self.dmabuf_root, entry.id + ".state")
        with open(path + ".new", "w", encoding="utf-8") as f:
            f.write(f"{entry.region}\n{entry.offset}\n{entry.size}\n{int(entry.force_sync)}\n"
                    f"{entry.name}\n")
        os.replace(path + ".new", path)

    @staticmethod
    def _fd_path(fd: int) -> Optional[str]:
        """The file ``fd`` is open on, as /proc/self/fd names it (None: not open)."""
        try:
            return os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
        except OSError:
            return None

    def dmabuf_of(self, fd: int) -> Optional[SimDmaBuf]:
        """The emulated dma-buf ``fd`` refers to (in any process of this simulator's
        directory, e.g. received with ``socket.recv_fds``), or None."""
        return self._dmabuf_at(self._fd_path(fd))

    def _dmabuf_at(self, path: Optional[str]) -> Optional[SimDmaBuf]:
        if path is None:
            return None
        folder, _, base = path.rpartition("/")
        if folder != self.dmabuf_root:
            return None
        try:
            with open(os.path.join(self.dmabuf_root, base + ".state"), encoding="utf-8") as f:
                region, offset, size, force_sync, name = f.read().split("\n")[:5]
        except (OSError, ValueError):
            return None
        return SimDmaBuf(base, region, int(offset), int(size), force_sync == "1", name)

    def _refuse_other_simulators_dmabuf(self, fd: int, path: Optional[str]) -> None:
        """A descriptor exported by another simulator (another process that did not
        share PYNQ_ALLOC_SIM_DIR) means nothing here: say so, rather than 'no dma-buf'."""
        if path is None:
            return
        folder = os.path.dirname(path)
        if os.path.basename(folder) == "dmabuf" and folder != self.dmabuf_root \
                and os.path.isdir(os.path.join(os.path.dirname(folder), "sys")):
            raise InvalidArgumentError(
                f"fd={fd} was exported by the simulator under {os.path.dirname(folder)}, "
                f"and this process runs its own under {self.root}: give both processes the "
                f"same simulator (PYNQ_ALLOC_SIM_DIR=<a directory> in the environment of "
                f"both, e.g. set before the pool or spawn starts)")

    def dmabuf_file_offset(self, fd: int) -> int:
        """Where the emulated dma-buf's first byte is in ``fd``'s file: pass it as mmap's
        offset (the real dma-buf maps from 0; see the module docstring)."""
        dmabuf = self.dmabuf_of(fd)
        if dmabuf is None:
            raise ValueError(f"fd={fd} is not a dma-buf of this simulator")
        return dmabuf.offset

    def fdinfo(self, fd: int) -> str:
        """/proc/self/fdinfo/<fd>, with the lines dma_buf_show_fdinfo() adds for a dma-buf
        (size, exp_name = the device name u-dma-buf exports under, name once set)."""
        text = _system_fdinfo(fd)
        path = self._fd_path(fd)
        dmabuf = self._dmabuf_at(path)
        if dmabuf is None:
            self._refuse_other_simulators_dmabuf(fd, path)
            return text
        text += f"size:\t{dmabuf.size}\nexp_name:\t{dmabuf.region}\n"
        return text + (f"name:\t{dmabuf.name}\n" if dmabuf.name else "")

    def _answer_dmabuf(self, fd: int, dmabuf: SimDmaBuf, request: int, arg: Any) -> Any:
        """The dma-buf file's ioctls as the kernel's dma_buf_ioctl() answers them."""
        if request not in (DMA_BUF_IOCTL_SYNC, DMA_BUF_SET_NAME_A, DMA_BUF_SET_NAME_B):
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))  # u-dma-buf's own, too
        if isinstance(arg, int):
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        data = bytes(memoryview(arg).cast("B"))
        if request == DMA_BUF_IOCTL_SYNC:
            if len(data) < _U64.size:
                raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
            (flags,) = _U64.unpack_from(data)
            if flags & ~(DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE | DMA_BUF_SYNC_END) \
                    or not flags & (DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return arg if isinstance(arg, bytes) else 0
        # SET_NAME: strndup_user(arg, DMA_BUF_NAME_LEN): at most 31 bytes and the NUL
        end = data.find(b"\0", 0, DMA_BUF_NAME_LEN)
        if end < 0:
            short = len(data) < DMA_BUF_NAME_LEN  # the kernel would read past the string
            raise OSError(errno.EFAULT if short else errno.EINVAL,
                          os.strerror(errno.EFAULT if short else errno.EINVAL))
        self._store_dmabuf(SimDmaBuf(dmabuf.id, dmabuf.region, dmabuf.offset, dmabuf.size,
                                     dmabuf.force_sync, data[:end].decode("utf-8", "replace")))
        return arg if isinstance(arg, bytes) else 0

    def _set_sync(self, region: SimRegion, flags: int, size: int, offset: int) -> None:
        """SET_SYNC: store direction (0..2), mode (> 0), offset, size (> 0), then run
        command 1 (for cpu) or 3 (for device) with the stored fields."""
        direction, mode, command = (flags >> 2) & 3, (flags >> 8) & 0xFF, flags & 3
        if direction <= 2:
            self.write_attr(region.name, "sync_direction", f"{direction}\n")
        if mode > 0:
            self.write_attr(region.name, "sync_mode", f"{mode}\n")
        self.write_attr(region.name, "sync_offset", f"{offset:#x}\n")
        if size > 0:
            self.write_attr(region.name, "sync_size", f"{size}\n")
        if command in (1, 3):
            stored = self._stored_sync(region.name)
            if stored[0] + stored[1] > region.size:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def _log_ioctl(self, region: str, request: int, arg: Any, answer: int,
                   dmabuf: Optional[SimDmaBuf] = None) -> None:
        if self._ioctl_log < 0:
            return
        command = b"-"
        whole = not isinstance(arg, int) and len(memoryview(arg).cast("B")) >= _U64.size
        if dmabuf is not None:
            if request == DMA_BUF_IOCTL_SYNC and whole:
                flags = _U64.unpack_from(bytes(memoryview(arg).cast("B")))[0]
                command = b"dmabuf:%#x:%#x:%#x" % (flags, dmabuf.offset, dmabuf.size)
        elif _NAME_OF.get(request) in ("SET_SYNC_FOR_CPU", "SET_SYNC_FOR_DEVICE") and whole:
            command = b"%#x" % _U64.unpack_from(bytes(memoryview(arg).cast("B")))[0]
        # one write of less than PIPE_BUF bytes: atomic, also from forked children
        os.write(self._ioctl_log, b"%s %#x %s %d\n" % (region.encode(), request, command, answer))

    # -- recording sync commands ----------------------------------------------------
    def _start_reader(self) -> None:
        for region in self.regions:
            for attr in ("sync_for_cpu", "sync_for_device"):
                path = self.attr_path(region, attr)
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                # Our own writer end: the FIFO never reports EOF when writers come and go.
                self._keep_open.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                self._channels[fd] = (region, attr, bytearray())
        log_r, self._ioctl_log = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(log_r, False)
        self._channels[log_r] = ("", "ioctl", bytearray())
        self._keep_open.append(self._ioctl_log)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._reader, name="pynq-alloc-sim", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        poller = select.poll()  # not select(): descriptors may be numbered past 1023
        for fd in [*self._channels, self._stop_r]:
            poller.register(fd, select.POLLIN)
        while True:
            ready = [fd for fd, _ in poller.poll()]
            if self._stop_r in ready:
                return
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        for fd, (region, attr, pending) in self._channels.items():
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                pending.extend(chunk)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                text = line.decode("ascii", "replace")
                if attr == "ioctl":
                    self._record_ioctl(text)
                else:
                    request = self._decode(region, attr, text)
                    if request is not None:
                        self._requests.append(request)

    def _record_ioctl(self, line: str) -> None:
        region, request_text, command_text, answer_text = line.split()
        request, answer = int(request_text, 16), int(answer_text)
        self._ioctl_calls.append(IoctlCall(region, request, answer))
        if command_text.startswith("dmabuf:"):
            if answer == 0:
                # u-dma-buf's begin_cpu/end_cpu: sync_for_cpu/_device over the whole export
                flags, offset, size = (int(v, 16) for v in command_text.split(":")[1:])
                rw = flags & (DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE)
                direction = {DMA_BUF_SYNC_READ: 2, DMA_BUF_SYNC_WRITE: 1}.get(rw, 0)
                attr = "sync_for_device" if flags & DMA_BUF_SYNC_END else "sync_for_cpu"
                self._requests.append(SyncRequest(region, attr, offset, size, direction,
                                                  command_text, True, "dmabuf", request))
            return
        name = _NAME_OF.get(request)
        if name not in ("SET_SYNC_FOR_CPU", "SET_SYNC_FOR_DEVICE") \
                or answer not in (0, errno.EINVAL):
            return
        command = int(command_text, 16)
        decoded = decode_sync_command(command, lambda: self._stored_sync(region),
                                      self.regions[region].size)
        if decoded is not None:
            attr = "sync_for_cpu" if name == "SET_SYNC_FOR_CPU" else "sync_for_device"
            offset, size, direction, valid = decoded
            self._requests.append(SyncRequest(region, attr, offset, size, direction,
                                              command_text, valid, "ioctl", request))

    def _decode(self, region: str, attr: str, text: str) -> Optional[SyncRequest]:
        value = _kstrtoull(text)
        if value is None:  # the driver's kstrtoull() answers EINVAL or ERANGE
            return SyncRequest(region, attr, 0, 0, 0, text, False)
        decoded = decode_sync_command(value, lambda: self._stored_sync(region),
                                      self.regions[region].size)
        if decoded is None:
            return None  # 0: the driver syncs nothing
        offset, size, direction, valid = decoded
        return SyncRequest(region, attr, offset, size, direction, text, valid)

    def sync_requests(self) -> List[SyncRequest]:
        """Every sync command received so far (including those of child processes)."""
        with self._lock:
            if self.record_syncs:
                self._drain()
            return list(self._requests)

    def ioctl_calls(self) -> List[IoctlCall]:
        """Every ioctl the simulated devices received (``record_syncs=True`` only)."""
        with self._lock:
            if self.record_syncs:
                self._drain()
            return list(self._ioctl_calls)

    def clear_sync_requests(self) -> None:
        """Forget the sync requests and ioctls recorded so far."""
        with self._lock:
            if self.record_syncs:
                self._drain()
            self._requests.clear()
            self._ioctl_calls.clear()

    # -- backend and lifetime ------------------------------------------------------------
    def backend(self) -> UdmabufBackend:
        """A udmabuf backend that sees this simulator's files instead of the driver's,
        its ioctls answered by :meth:`ioctl`."""
        return UdmabufBackend(self.sysfs_root, self.dev_root, self.run_dir, ioctl=self.ioctl,
                              fdinfo=self.fdinfo)

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join()
            self._thread = None
            self._ioctl_log = -1
            for fd in [*self._channels, *self._keep_open, self._stop_r, self._stop_w]:
                os.close(fd)
            self._channels.clear()
            self._keep_open.clear()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _memory_backed_tmp() -> Optional[str]:
    """/dev/shm where it is usable: a region file on tmpfs behaves like RAM (no writeback
    faults on a disk-backed file), so measurements on the simulator mean something."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


_default: Optional[Simulator] = None


def default_simulator() -> Simulator:
    """The simulator behind ``PYNQ_ALLOC_BACKEND=sim``.

    With ``PYNQ_ALLOC_SIM_DIR`` set, its files live there and every process that
    names the same directory shares the same regions and ledger (the directory
    is laid out by the first one); otherwise in a temporary directory removed at
    exit.
    """
    global _default
    if _default is None:
        root = os.environ.get("PYNQ_ALLOC_SIM_DIR")
        if root:
            os.makedirs(root, exist_ok=True)
        _default = Simulator(DEFAULT_REGIONS, root=root or None)
        atexit.register(_default.close)
    return _default
