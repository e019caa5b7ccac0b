"""What the on-target tests use to look at a region from outside the package:
the device tree in /proc/device-tree, an independent uncached mapping of the
device or of /dev/mem, and child processes run as other users."""
from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

DT_ROOT = Path("/proc/device-tree")
SYSFS_CLASS = Path(os.environ.get("PYNQ_ALLOC_SYSFS_ROOT", "/sys/class/u-dma-buf"))
DEV_ROOT = Path(os.environ.get("PYNQ_ALLOC_DEV_ROOT", "/dev"))
UDMABUF_COMPATIBLE = "ikwzm,u-dma-buf"
# u-dma-buf ioctl (magic 'U'): SET_SYNC_FOR_CPU / SET_SYNC_FOR_DEVICE take the
# encoded one-shot command: offset bits 63-32, size bits 31-4, direction 3-2, bit 0.
IOCTL_SET_SYNC_FOR_CPU = 0x40085505
IOCTL_SET_SYNC_FOR_DEVICE = 0x40085506


@dataclass(frozen=True)
class Pool:
    """A reserved-memory node as the device tree describes it."""
    path: Path
    base: int
    size: int
    no_map: bool
    reusable: bool

    @property
    def end(self) -> int:
        return self.base + self.size


def _cells(path: Path) -> list[int]:
    raw = path.read_bytes()
    return [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw) - len(raw) % 4, 4)]


def _strings(path: Path) -> list[str]:
    return [s for s in path.read_bytes().decode(errors="replace").split("\0") if s]


def _walk(top: Path) -> Iterator[Path]:
    for dirpath, dirnames, _ in os.walk(top):
        for d in dirnames:
            yield Path(dirpath) / d


def udmabuf_node(name: str) -> Optional[Path]:
    """The `ikwzm,u-dma-buf` node whose device-name (or node name) is `name`."""
    if not DT_ROOT.exists():
        return None
    for node in _walk(DT_ROOT):
        compat = node / "compatible"
        if not compat.exists() or UDMABUF_COMPATIBLE not in _strings(compat):
            continue
        dev_name = node / "device-name"
        label = _strings(dev_name)[0] if dev_name.exists() else node.name.split("@")[0]
        if label == name:
            return node
    return None


def reserved_pool(name: str) -> Optional[Pool]:
    """The reserved-memory node that the u-dma-buf node of `name` points at."""
    node = udmabuf_node(name)
    if node is None or not (node / "memory-region").exists():
        return None
    phandle = _cells(node / "memory-region")[0]
    for cand in _walk(DT_ROOT):
        for prop in ("phandle", "linux,phandle"):
            p = cand / prop
            if p.exists() and _cells(p) == [phandle]:
                parent = cand.parent
                ac = _cells(parent / "#address-cells")[0] if (
                    parent / "#address-cells").exists() else 2
                sc = _cells(parent / "#size-cells")[0] if (parent / "#size-cells").exists() else 1
                reg = _cells(cand / "reg")
                base = sum(c << (32 * (ac - 1 - i)) for i, c in enumerate(reg[:ac]))
                size = sum(c << (32 * (sc - 1 - i)) for i, c in enumerate(reg[ac:ac + sc]))
                return Pool(cand, base, size, (cand / "no-map").exists(),
                            (cand / "reusable").exists())
    return None


def sysfs(name: str, attr: str) -> str:
    return (SYSFS_CLASS / name / attr).read_text().strip()


class Window:
    """An uncached, independent view of physical memory: /dev/<region> opened
    with O_SYNC (write-combine or Device memory, as the region's sync_mode says)
    or /dev/mem (a no-map carve-out maps as Device memory). Device memory faults
    on unaligned access, so only aligned 64-bit words are read and written."""

    def __init__(self, path: str, map_base: int, offset: int, length: int):
        page = mmap.PAGESIZE
        start = offset - offset % page
        self._skip = offset - start
        self._len = length
        size = (self._skip + length + page - 1) // page * page
        fd = os.open(path, os.O_RDWR | os.O_SYNC)
        try:
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                                 offset=map_base + start)
        finally:
            os.close(fd)
        assert self._skip % 8 == 0 and length % 8 == 0
        self._words = memoryview(self._mm).cast("Q")

    def read_words(self) -> list[int]:
        first = self._skip // 8
        return self._words[first:first + self._len // 8].tolist()

    def write_words(self, words: Sequence[int]) -> None:
        first = self._skip // 8
        for i, w in enumerate(words):
            self._words[first + i] = w

    def close(self) -> None:
        self._words.release()
        self._mm.close()

    def __enter__(self) -> Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_sync_command(cmd: int) -> tuple[int, int, int]:
    """(offset, size, direction) of an encoded u-dma-buf sync command."""
    return cmd >> 32, cmd & 0xFFFFFFF0, (cmd >> 2) & 3


def run_python(code: str, *, user: Optional[int] = None, group: Optional[int] = None,
               extra_groups: Optional[list[int]] = None, env: Optional[dict] = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh python3, optionally as another user (needs root)."""
    kw: dict = {}
    if user is not None:
        kw.update(user=user, group=group, extra_groups=extra_groups or [], cwd="/")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    child_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=child_env, **kw)


def in_child(fn: Callable[..., dict], *args: Any) -> dict:
    """fn(*args) in a forked child (numpy and the package already imported, so
    no interpreter start-up); its dict comes back as JSON. A child killed by a
    signal (SIGBUS on Device memory, SIGSEGV) fails the caller, not the suite.
    The package gives a forked child its own region handles and mappings."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        status = 0
        try:
            out = json.dumps(fn(*args))
        except BaseException as exc:  # reported to the parent, which fails the test
            out = json.dumps({"child_exception": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc()})
            status = 1
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(out)
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"the child was killed by signal {os.WTERMSIG(status)}")
    result = json.loads(data)
    if "child_exception" in result:
        raise AssertionError(f"in the child: {result['traceback']}")
    return dict(result)


def last_json(out: str) -> dict:
    """The last line of `out` that parses as a JSON object."""
    for line in reversed(out.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise AssertionError(f"no JSON object in the output:\n{out}")
