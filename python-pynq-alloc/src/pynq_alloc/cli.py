"""``pynq-alloc info|selftest|bench``: what an engineer runs on a board first."""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import __version__, regions
from .allocate import allocate
from .backends import BACKEND_NAMES, get_backend
from .backends.udmabuf import RegionInfo, UdmabufBackend
from .errors import PynqAllocError

_INFO_FIELDS = ("name", "phys_addr", "size", "coherent", "sync_mode", "driver_version",
                "ioctl_version", "device_path", "used", "free", "largest_free", "buffers")


def cmd_info(backend: UdmabufBackend, as_json: bool) -> int:
    reports = [{f: getattr(r, f) for f in _INFO_FIELDS} for r in regions(backend)]
    if as_json:
        print(json.dumps({"backend": backend.name, "sysfs_root": backend.sysfs_root,
                          "regions": reports}, indent=2))
        return 0
    print(f"pynq-alloc {__version__}, regions under {backend.sysfs_root}:")
    for r in reports:
        print(f"  {r['name']}: {r['size']} bytes at {r['phys_addr']:#x}, "
              f"{'coherent' if r['coherent'] else 'non-coherent'}, sync_mode {r['sync_mode']}, "
              f"u-dma-buf {r['driver_version']}; used {r['used']}, free {r['free']}, "
              f"largest free {r['largest_free']}, {r['buffers']} buffer(s)")
    return 0


def _read_back(region: RegionInfo, offset: int, nbytes: int) -> bytes:
    """Read device memory through a second, independent mapping of the device file."""
    page = mmap.PAGESIZE
    start = offset - offset % page
    fd = os.open(region.device_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with mmap.mmap(fd, offset - start + nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                       offset=start) as mm:
            return mm[offset - start: offset - start + nbytes]
    finally:
        os.close(fd)


def selftest_region(backend: UdmabufBackend, region: RegionInfo) -> Dict[str, Any]:
    steps: List[str] = []
    try:
        with allocate(1024, "u4", target=region.name, backend=backend) as buf:
            steps.append("allocate")
            pattern = (np.arange(1024, dtype="u8") * 2654435761 % (1 << 32)).astype("u4")
            buf[:] = pattern
            buf.flush()
            steps.append("write+flush")
            offset = buf.device_address - region.phys_addr
            seen = np.frombuffer(_read_back(region, offset, buf.nbytes), dtype="u4")
            if not np.array_equal(seen, pattern):
                raise AssertionError("the device memory does not hold what was flushed")
            steps.append("read back through a second mapping")
            buf.invalidate()
            if not np.array_equal(buf, pattern):
                raise AssertionError("the buffer changed after invalidate()")
            steps.append("invalidate+read")
        steps.append("free")
        return {"region": region.name, "ok": True, "steps": steps}
    except (PynqAllocError, OSError, AssertionError) as exc:
        return {"region": region.name, "ok": False, "steps": steps,
                "error": f"{type(exc).__name__}: {exc}"}


def cmd_selftest(backend: UdmabufBackend, as_json: bool) -> int:
    results = [selftest_region(backend, r) for r in backend.regions()]
    ok = all(r["ok"] for r in results)
    if as_json:
        print(json.dumps({"ok": ok, "regions": results}, indent=2))
    else:
        for r in results:
            print(f"{'PASS' if r['ok'] else 'FAIL'}: {r['region']}: {', '.join(r['steps'])}"
                  + (f" -- {r['error']}" if not r["ok"] else ""))
    return 0 if ok else 1


def cmd_bench(backend: UdmabufBackend, quick: bool, strict: bool) -> int:
    """Every benchmark, each line printed as it is measured. Exit 0 once all have
    run (a benchmark reports; a missed target is in its line), 1 with --strict
    when a target is missed."""
    from .bench import run_all

    found = regions(backend)
    if not found:
        print("pynq-alloc: error: no region to benchmark", file=sys.stderr)
        return 2
    first = found[0]
    print(f"pynq-alloc bench{' --quick' if quick else ''} on {first.name} ({first.size} bytes, "
          f"{first.free} free; {backend.name} backend)", flush=True)
    results = run_all(backend, quick=quick, out=lambda line: print(line, flush=True))
    met = sum(r.ok for r in results)
    print(f"bench: {met} of {len(results)} targets met")
    return 1 if strict and met < len(results) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pynq-alloc", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pynq-alloc {__version__}")
    parser.add_argument("--backend", choices=BACKEND_NAMES,
                        help="default: $PYNQ_ALLOC_BACKEND, else the u-dma-buf driver")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="regions, driver version, coherency, usage")
    info.add_argument("--json", action="store_true")
    selftest = sub.add_parser("selftest", help="allocate, write, flush, read back, free")
    selftest.add_argument("--json", action="store_true")
    bench = sub.add_parser("bench", help="benchmarks, printed as ratios")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, a few seconds")
    bench.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    try:
        backend = get_backend(args.backend)
        if args.command == "info":
            return cmd_info(backend, args.json)
        if args.command == "selftest":
            return cmd_selftest(backend, args.json)
        return cmd_bench(backend, args.quick, args.strict)
    except PynqAllocError as exc:
        print(f"pynq-alloc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
