"""Every bad input and fault, in one table: the error's type, a message that names the
problem and the fix, and afterwards a consistent pool with nothing leaked.

Each row: an optional ``fault`` that breaks the simulator's files (and returns a
function that mends them), an ``action`` that must raise, the exception type, and
two regular expressions, one for what was wrong and one for what to do. After the
row, with the files mended, a fresh backend (its own ledger view) finds every
region's pool consistent and exactly as used as before the row.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np
import pytest
from as_user import as_nobody
from pynq_alloc import (
    BufferFreedError,
    DriverInterfaceError,
    DriverNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
    LedgerError,
    OutOfMemoryError,
    PynqAllocError,
    RegionNotFoundError,
    SyncError,
    allocate,
)
from pynq_alloc.backends.sim import Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend, sync_commands

Mend = Optional[Callable[[], None]]


@dataclass
class Case:
    name: str
    action: Callable[[Simulator, UdmabufBackend], Any]
    error: type
    problem: str
    fix: str
    fault: Optional[Callable[[Simulator], Mend]] = None


def alloc(**kwargs: Any) -> Callable[[Simulator, UdmabufBackend], Any]:
    kwargs.setdefault("shape", 4)

    def action(sim: Simulator, backend: UdmabufBackend) -> Any:
        return allocate(backend=kwargs.pop("backend", backend), **kwargs)
    return action


def set_attr(attr: str, text: str) -> Callable[[Simulator], Mend]:
    def fault(sim: Simulator) -> Mend:
        path = sim.attr_path("udmabuf0", attr)
        with open(path) as f:
            good = f.read()
        sim.write_attr("udmabuf0", attr, text)
        return lambda: sim.write_attr("udmabuf0", attr, good)
    return fault


def freed_then(call: Callable[[Any], Any], view: bool = False) -> Callable[..., Any]:
    def action(sim: Simulator, backend: UdmabufBackend) -> Any:
        buf = allocate(64, "u4", backend=backend)
        part = buf[8:16]
        buf.freebuffer()
        return call(part if view else buf)
    return action


def hide_device(sim: Simulator) -> Mend:
    path = sim.device_path("udmabuf0")
    os.rename(path, path + ".away")
    return lambda: os.rename(path + ".away", path)


def remove_sysfs(sim: Simulator) -> Mend:
    os.rename(sim.sysfs_root, sim.sysfs_root + ".away")
    return lambda: os.rename(sim.sysfs_root + ".away", sim.sysfs_root)


HOLDER = """
import sys, time
from pynq_alloc import allocate
from pynq_alloc.backends.udmabuf import UdmabufBackend
buf = allocate(4, backend=UdmabufBackend(*sys.argv[1:4]))
print("holding", flush=True)
time.sleep(60)
"""


def corrupt_ledger_in_use(sim: Simulator) -> Mend:
    """Another process holds a buffer (so uses the ledger) while the ledger is
    scribbled on; mending restores the bytes and ends that process (whose block
    the next allocation reclaims)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, sim.sysfs_root, sim.dev_root,
                               sim.run_dir], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
    path = os.path.join(sim.run_dir, "udmabuf0.ledger")
    with open(path, "r+b") as f:
        good = f.read(16)
        f.seek(0)
        f.write(b"\x00" * 16)

    def mend() -> None:
        with open(path, "r+b") as f:
            f.write(good)
        holder.kill()
        holder.wait()
    return mend


def as_other_process(sim: Simulator, backend: UdmabufBackend) -> None:
    """The ledger of a handle inherited over fork() refuses to allocate in the child."""
    handle = backend.handle(backend.region())
    handle.ledger.pid = -1  # what a forked child's copy looks like
    try:
        handle.ledger.allocate(64, 64)
    finally:
        handle.ledger.pid = os.getpid()


CASES: List[Case] = [
    Case("shape zero", alloc(shape=0), InvalidArgumentError, "dimension 0 is zero",
         "at least one element"),
    Case("shape negative", alloc(shape=-3), InvalidArgumentError, "-3 is negative",
         "at least one element"),
    Case("zero in a tuple shape", alloc(shape=(4, 0)), InvalidArgumentError, r"\(4, 0\)",
         "at least one element"),
    Case("0-d shape", alloc(shape=()), InvalidArgumentError, "0-d array", r"shape=\(1,\)"),
    Case("float shape", alloc(shape=2.5), InvalidTypeError, "2.5 is a float", "tuple of ints"),
    Case("string shape", alloc(shape="10"), InvalidTypeError, "'10' is a str", "tuple of ints"),
    Case("bool shape", alloc(shape=True), InvalidTypeError, "True is a bool", "tuple of ints"),
    Case("None in shape", alloc(shape=(2, None)), InvalidTypeError, "None is a NoneType",
         "tuple of ints"),
    Case("object dtype", alloc(dtype=object), InvalidTypeError, "Python objects",
         "fixed-size numeric"),
    Case("raw void dtype", alloc(dtype="V8"), InvalidTypeError, "raw void", "structured dtype"),
    Case("unsized dtype", alloc(dtype="U"), InvalidTypeError, "no size", "give a size"),
    Case("unknown dtype", alloc(dtype="u3"), InvalidTypeError, "'u3' is not a numpy dtype",
         "use e.g."),
    Case("unknown target", alloc(target="udmabuf9"), RegionNotFoundError, "'udmabuf9'",
         "Pass one of those|device-name"),
    Case("target of a wrong type", alloc(target=3.0), InvalidTypeError, "is a float",
         "region name"),
    Case("target an int", alloc(target=42), InvalidTypeError, "target=42 is an int",
         "region name"),
    Case("unknown keyword", alloc(cacheble=False), InvalidTypeError, "cacheble",
         "accepts cacheable, align, backend"),
    Case("cacheable not a bool", alloc(cacheable="no"), InvalidTypeError, "'no'",
         "True .* or False"),
    Case("align not a power of two", alloc(align=3000), InvalidArgumentError, "3000",
         "power of two"),
    Case("align zero", alloc(align=0), InvalidArgumentError, "align=0", "power of two"),
    Case("align not an integer", alloc(align=64.0), InvalidTypeError, "64.0", "power of two"),
    Case("align beyond the region", alloc(align=1 << 30), OutOfMemoryError,
         "aligned to 0x40000000 in region .*: no address in it .* is a multiple of align=",
         "smaller align="),
    Case("size beyond the region", alloc(shape=(1 << 20, 32)), OutOfMemoryError,
         "134217728 bytes.*16777216", "Allocate less|more memory"),
    Case("unknown backend name", alloc(backend="fpga"), InvalidArgumentError, "'fpga'",
         "udmabuf, sim"),
    Case("backend of a wrong type", alloc(backend=5), InvalidTypeError, "is an int",
         "UdmabufBackend"),
    Case("use after free: device_address", freed_then(lambda b: b.device_address),
         BufferFreedError, "was freed", "Allocate a new buffer"),
    Case("use after free: flush", freed_then(lambda b: b.flush()), BufferFreedError,
         "was freed", "Allocate a new buffer"),
    Case("flush of a freed view", freed_then(lambda v: v.flush(), view=True), BufferFreedError,
         "was freed", "Allocate a new buffer"),
    Case("invalidate of a freed view", freed_then(lambda v: v.invalidate(), view=True),
         BufferFreedError, "was freed", "Allocate a new buffer"),
    Case("free of a copy", lambda s, b: allocate(4, backend=b)[[0, 1]].view(
        type(allocate(1, backend=b))).freebuffer(), InvalidArgumentError,
         "not in DMA memory", "nothing to free"),
    Case("device address of a copy",
         lambda s, b: np.ndarray.__new__(type(allocate(1, backend=b)), (4,)).device_address,
         InvalidArgumentError, "not in DMA memory", r"allocate\(\)"),
    Case("no driver at all", alloc(), DriverNotFoundError, "no u-dma-buf region",
         "modprobe u-dma-buf", fault=remove_sysfs),
    Case("device file missing", alloc(), DriverNotFoundError, "does not exist",
         "module loaded", fault=hide_device),
    Case("unknown driver version", alloc(), DriverInterfaceError, "'9.0.1'",
         "pins v5.5.0|upgrade", fault=set_attr("driver_version", "9.0.1\n")),
    Case("garbage driver version", alloc(), DriverInterfaceError, "'garbage'",
         "pins v5.5.0|upgrade", fault=set_attr("driver_version", "garbage\n")),
    Case("phys_addr without 0x", alloc(), DriverInterfaceError, "'7ad00000'.*hexadecimal",
         "really a u-dma-buf", fault=set_attr("phys_addr", "7ad00000\n")),
    Case("phys_addr not hex", alloc(), DriverInterfaceError, "'0xZZ'", "really a u-dma-buf",
         fault=set_attr("phys_addr", "0xZZ\n")),
    Case("negative size", alloc(), DriverInterfaceError, "'-5'", "really a u-dma-buf",
         fault=set_attr("size", "-5\n")),
    Case("zero size", alloc(), DriverInterfaceError, "0 bytes", "give it a 'size'",
         fault=set_attr("size", "0\n")),
    Case("sync_mode out of range", alloc(), DriverInterfaceError, "'9'", "really a u-dma-buf",
         fault=set_attr("sync_mode", "9\n")),
    Case("dma_coherent junk", alloc(), DriverInterfaceError, "'yes'", "really a u-dma-buf",
         fault=set_attr("dma_coherent", "yes\n")),
    Case("non-text attribute", alloc(), DriverInterfaceError, "non-text bytes",
         "not a u-dma-buf attribute", fault=set_attr("size", "\xff\n")),
    Case("cacheable=False on sync_mode 1", alloc(cacheable=False), InvalidArgumentError,
         "sync_mode 1.*Device memory", "sync-mode = <2>", fault=set_attr("sync_mode", "1\n")),
    Case("any mapping on sync_mode 5", alloc(), InvalidArgumentError, "sync_mode 5",
         "sync-mode = <2>", fault=set_attr("sync_mode", "5\n")),
    Case("cacheable=False on sync_mode 0", alloc(cacheable=False), InvalidArgumentError,
         "keeps the CPU cache on", "sync-mode = <2>|cacheable=True",
         fault=set_attr("sync_mode", "0\n")),
    Case("sync beyond 4 GiB into a region", lambda s, b: sync_commands(5 << 30, 64, 1, 8 << 30),
         SyncError, "32-bit offset", "smaller than 4 GiB"),
    Case("ledger corrupted while in use", alloc(), LedgerError, "of region udmabuf0 is corrupt",
         "Stop every process.*delete", fault=corrupt_ledger_in_use),
    Case("inherited ledger used in a forked child", as_other_process, LedgerError,
         "ledger of region udmabuf0 belongs to process", "own handle"),
]


def used_per_region(sim: Simulator) -> List[int]:
    backend = sim.backend()
    result = []
    for region in backend.regions():
        ledger = backend.handle(region).ledger
        ledger.check()
        result.append(ledger.stats().used)
    backend.close()
    return result


def test_the_table_has_at_least_30_distinct_cases() -> None:
    assert len({case.name for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_a_clear_error_and_loses_nothing(sim: Simulator, backend: UdmabufBackend,
                                                         case: Case) -> None:
    baseline = used_per_region(sim)
    mend = case.fault(sim) if case.fault else None
    try:
        with pytest.raises(case.error) as info:
            case.action(sim, backend)
    finally:
        if mend is not None:
            mend()
    message = str(info.value)
    assert isinstance(info.value, PynqAllocError)
    assert re.search(case.problem, message), f"problem not named: {message}"
    assert re.search(case.fix, message), f"no fix given: {message}"
    del info  # its traceback holds the row's arrays (a freed buffer's live view defers)
    gc.collect()
    assert used_per_region(sim) == baseline


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("member", [True, False], ids=["in group", "outside group"])
def test_device_group_decides_who_may_allocate(sim: Simulator, member: bool) -> None:
    """The layer's udev rule gives /dev/udmabuf* and the sync files to group dma, mode
    0660: reproduced on the simulator's files, with a child that drops root."""
    group = 4242
    for path in [sim.device_path("udmabuf0"), sim.attr_path("udmabuf0", "sync_for_device"),
                 sim.attr_path("udmabuf0", "sync_for_cpu")]:
        os.chown(path, 0, group, follow_symlinks=False)
        os.chmod(path, 0o660)
    os.makedirs(sim.run_dir, exist_ok=True)
    os.chown(sim.run_dir, 0, group)
    os.chmod(sim.run_dir, 0o2770)
    for directory in (sim.root, os.path.dirname(sim.run_dir)):
        os.chmod(directory, 0o755)
    def work() -> str:
        buf = allocate(16, backend=sim.backend())
        buf[:] = 1
        buf.flush()
        return "ok"
    said = as_nobody(work, [group] if member else [])
    if member:
        assert said == "ok"
    else:
        assert "permission denied" in said and "usermod -aG dma" in said
    assert used_per_region(sim) == [0, 0]


def test_a_ledger_this_user_cannot_open_is_named_with_the_fix(sim: Simulator) -> None:
    """The device opens, its ledger file does not (mode 0600, another owner): the error
    names the region, the ledger file and what to do. As root, a forked child drops to
    an unprivileged user; otherwise the file is made unreadable to its owner."""
    first = sim.backend()
    allocate(4, backend=first).freebuffer()
    first.close()  # the ledger is opened afresh below
    path = os.path.join(sim.run_dir, "udmabuf0.ledger")
    os.chmod(path, 0o600 if os.geteuid() == 0 else 0o000)
    if os.geteuid() == 0:  # what nobody needs to reach the file it is refused
        for directory in (sim.root, os.path.dirname(sim.run_dir), sim.run_dir):
            os.chmod(directory, 0o777)
        os.chmod(sim.device_path("udmabuf0"), 0o666)

    def work() -> str:
        allocate(4, backend=sim.backend())
        return "allocated"
    said = as_nobody(work)
    os.chmod(path, 0o660)
    assert said.startswith("DevicePermissionError: cannot open the ledger of region udmabuf0: "
                           f"permission denied on {path}"), said
    assert "usermod -aG dma" in said
