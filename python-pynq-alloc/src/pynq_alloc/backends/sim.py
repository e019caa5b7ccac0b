"""Host simulator of the u-dma-buf driver: the driver's files, laid out in a directory.

The simulator emulates the *driver*, not this library: it writes a sysfs tree
(``sys/class/u-dma-buf/<name>/`` with the driver's attribute names and value
formats, each ending in a newline) and a region file standing in for
``/dev/<name>``, then hands out an ordinary
:class:`~pynq_alloc.backends.udmabuf.UdmabufBackend` pointed at them, so the
code that runs on a board is the code under test on a host.

Emulated faithfully:
  * discovery, attribute names and formats (``phys_addr`` as ``0x`` + 16 hex
    digits, ``size`` in decimal, ``dma_coherent``, ``sync_mode``, versions...);
  * the device's memory: a sparse file of the page-rounded size that every
    process maps ``MAP_SHARED`` (fresh memory reads as zero, as the driver's);
  * the sysfs cache-sync files: with ``record_syncs=True`` ``sync_for_cpu`` and
    ``sync_for_device`` are FIFOs read by the simulator, which decodes each
    command exactly as the driver does (``1`` = use the stored
    ``sync_offset``/``sync_size``/``sync_direction``; otherwise the one-shot
    encoding offset<<32 | size | direction<<2 | 1) and records it, flagging
    requests the driver would refuse with EINVAL. Otherwise they lead to
    ``/dev/null``.

Not emulated (checked on the real driver by the on-target suite in QEMU):
  * ioctls: the region file is a plain file, on which every ioctl fails with
    ENOTTY, so the backend takes its sysfs fallback here;
  * caching itself (O_SYNC, write-combine, Device memory): the file is always
    coherent memory, so cache-state bugs cannot show up on a host;
  * the kernel's refusals: EACCES on read-only attributes for root, EINVAL
    returned to the writer (it is recorded instead), MAP_PRIVATE's BUG().
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .._platform import PAGE_SIZE
from .udmabuf import UdmabufBackend

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
    attr: str  # "sync_for_device" or "sync_for_cpu"
    offset: int
    size: int
    direction: int  # 0 bidirectional, 1 to device, 2 from device
    raw: str
    valid: bool  # False where the driver answers EINVAL


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
        self.regions = {r.name: r for r in regions}
        self.record_syncs = record_syncs
        self._requests: List[SyncRequest] = []
        self._lock = threading.Lock()
        self._fifos: Dict[int, Tuple[str, str, bytearray]] = {}
        self._keep_open: List[int] = []
        self._stop_r, self._stop_w = -1, -1
        self._thread: Optional[threading.Thread] = None
        for region in regions:
            self._lay_out(region)
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
            "ioctl_version": str(region.ioctl_version),
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

    # -- recording sync commands ----------------------------------------------------
    def _start_reader(self) -> None:
        for region in self.regions:
            for attr in ("sync_for_cpu", "sync_for_device"):
                path = self.attr_path(region, attr)
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                # Our own writer end: the FIFO never reports EOF when writers come and go.
                self._keep_open.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                self._fifos[fd] = (region, attr, bytearray())
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._reader, name="pynq-alloc-sim", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        poller = select.poll()  # not select(): descriptors may be numbered past 1023
        for fd in [*self._fifos, self._stop_r]:
            poller.register(fd, select.POLLIN)
        while True:
            ready = [fd for fd, _ in poller.poll()]
            if self._stop_r in ready:
                return
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        for fd, (region, attr, pending) in self._fifos.items():
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
                self._requests.append(self._decode(region, attr, line.decode("ascii", "replace")))

    def _stored(self, region: str, attr: str) -> int:
        with open(self.attr_path(region, attr), encoding="ascii") as f:
            return int(f.read().strip(), 0)

    def _decode(self, region: str, attr: str, text: str) -> SyncRequest:
        size_limit = self.regions[region].size
        try:
            value = int(text.strip(), 0)  # the driver parses with kstrtoull(..., 0)
        except ValueError:
            return SyncRequest(region, attr, 0, 0, 0, text, False)
        if value == 1:
            offset = self._stored(region, "sync_offset")
            size = self._stored(region, "sync_size")
            direction = self._stored(region, "sync_direction")
        else:
            offset, size, direction = value >> 32, value & 0xFFFFFFF0, (value >> 2) & 3
        valid = bool(value & 1) and direction != 3 and offset + size <= size_limit
        if value != 1 and direction == 3:
            direction, valid = 0, bool(value & 1) and offset + size <= size_limit
        return SyncRequest(region, attr, offset, size, direction, text, valid)

    def sync_requests(self) -> List[SyncRequest]:
        """Every sync command received so far (including those of child processes)."""
        with self._lock:
            if self.record_syncs:
                self._drain()
            return list(self._requests)

    def clear_sync_requests(self) -> None:
        with self._lock:
            if self.record_syncs:
                self._drain()
            self._requests.clear()

    # -- backend and lifetime ------------------------------------------------------------
    def backend(self) -> UdmabufBackend:
        """A udmabuf backend that sees this simulator's files instead of the driver's."""
        return UdmabufBackend(self.sysfs_root, self.dev_root, self.run_dir)

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join()
            self._thread = None
            for fd in [*self._fifos, *self._keep_open, self._stop_r, self._stop_w]:
                os.close(fd)
            self._fifos.clear()
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
