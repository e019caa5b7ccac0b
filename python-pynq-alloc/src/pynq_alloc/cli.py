"""``pynq-alloc info|selftest|bench|check-dtb``: what an engineer runs on a board first."""

from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import signal
import sys
import textwrap
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import __version__, regions
from .allocate import allocate
from .backends import BACKEND_NAMES, get_backend
from .backends.udmabuf import RegionInfo, UdmabufBackend
from .diagnose import Check, Roots, diagnose
from .errors import DeviceError, DriverNotFoundError, PynqAllocError
from .units import human_size

_INFO_FIELDS = ("name", "phys_addr", "size", "coherent", "sync_mode", "driver_version",
                "ioctl_version", "device_path")
_USAGE_FIELDS = ("used", "free", "largest_free", "buffers")

DESCRIPTION = """\
PYNQ-style DMA buffers through the u-dma-buf driver: what the board offers, whether
it works, how fast it is, and whether a device tree is right.

  info        the regions (size, physical address, coherency, usage) and, when
              something is missing, a diagnosis of each step with its fix
  selftest    allocate, write, flush, read back through a second mapping, free
  bench       benchmarks, printed as ratios measured side by side
  check-dtb   the device-tree rules the kernel and the driver need, on a DTB file

Options can be given before or after the command (pynq-alloc info --backend sim).
"""

EPILOG = """\
backends: udmabuf (the driver, default) or sim (a simulator of the driver's files, for
trying pynq_alloc without hardware; every output made on it says so).
environment: PYNQ_ALLOC_BACKEND=udmabuf|sim, PYNQ_ALLOC_SIM_DIR (share one simulator
between processes), PYNQ_ALLOC_SYSFS_ROOT, PYNQ_ALLOC_DEV_ROOT, PYNQ_ALLOC_RUN_DIR.
exit status: 0 all is well, 1 a check or a test failed (the output says which and
the fix), 2 the command could not run (bad option, unreadable file).
"""


class Context:
    """The backend a command runs on and how to say which one it is."""

    def __init__(self, backend_arg: Optional[str], roots: Optional[Roots]) -> None:
        env = os.environ.get("PYNQ_ALLOC_BACKEND")
        chosen = backend_arg or env or "udmabuf"
        self.name = chosen.strip().lower()
        self.chosen_by = (f"--backend {backend_arg}" if backend_arg
                          else f"PYNQ_ALLOC_BACKEND={env}" if env else "the default")
        if roots is not None and self.name == "udmabuf":
            self.backend = UdmabufBackend(roots.sysfs_class, roots.dev, roots.run_dir)
        else:
            # None lets get_backend read PYNQ_ALLOC_BACKEND and name it in any error.
            self.backend = get_backend(backend_arg)
        self.simulated = self.name == "sim"
        base = roots or Roots()
        self.roots = Roots(proc=base.proc, device_tree=base.device_tree,
                           sys_module=base.sys_module, lib_modules=base.lib_modules,
                           kernel_release=base.kernel_release,
                           sysfs_class=self.backend.sysfs_root, dev=self.backend.dev_root,
                           run_dir=self.backend.run_dir)

    def banner(self) -> str:
        if self.simulated:
            root = os.path.dirname(os.path.dirname(os.path.dirname(self.backend.sysfs_root)))
            return (f"on the SIMULATOR (backend sim, chosen by {self.chosen_by}): no hardware "
                    f"and no driver; the regions are files under {root} and their "
                    f"physical addresses are made up")
        return f"on the u-dma-buf driver ({self.backend.sysfs_root})"

    def json_head(self) -> Dict[str, Any]:
        return {"backend": self.name, "simulated": self.simulated, "version": __version__}


def _region_reports(ctx: Context, checks: List[Check]) -> List[Dict[str, Any]]:
    """Each region's fields and its usage (None where the ledger cannot be read)."""
    try:
        found = regions(ctx.backend)
        return [{f: getattr(r, f) for f in _INFO_FIELDS + _USAGE_FIELDS} for r in found]
    except PynqAllocError as exc:
        usage_error = exc
    try:
        infos = ctx.backend.regions(refresh=True)
    except PynqAllocError as exc:
        checks.append(Check("region files", False, str(exc)))
        return []
    checks.append(Check("pool usage", False, str(usage_error)))
    return [{**{f: getattr(r, f) for f in _INFO_FIELDS}, **dict.fromkeys(_USAGE_FIELDS)}
            for r in infos]


def cmd_info(ctx: Context, as_json: bool) -> int:
    diagnosis = diagnose(ctx.roots, kernel=not ctx.simulated)
    checks = list(diagnosis.checks)
    reports = _region_reports(ctx, checks) if diagnosis.regions else []
    ok = all(c.ok for c in checks) and bool(reports)
    if as_json:
        print(json.dumps({**ctx.json_head(), "sysfs_root": ctx.backend.sysfs_root, "ok": ok,
                          "regions": reports, "checks": [c.as_dict() for c in checks]},
                         indent=2))
        return 0 if ok else 1
    print(f"pynq-alloc {__version__} {ctx.banner()}")
    if reports:
        print(f"{len(reports)} region(s):")
    for r in reports:
        end = r["phys_addr"] + r["size"] - 1
        print(f"  {r['name']}: {human_size(r['size'])} at {r['phys_addr']:#x}-{end:#x}, "
              f"{'coherent' if r['coherent'] else 'non-coherent'}, sync_mode {r['sync_mode']}, "
              f"u-dma-buf {r['driver_version']}, {r['device_path']}")
        if r["used"] is not None:
            print(f"    used {human_size(r['used'])}, free {human_size(r['free'])} "
                  f"(largest block {human_size(r['largest_free'])}), {r['buffers']} buffer(s)")
    print("checks:" if ok else "checks (PROBLEM lines stop allocation; each says its fix):")
    for c in checks:
        print(f"  {'ok     ' if c.ok else 'PROBLEM'} {c.check}: {c.detail}")
        if c.fix:
            print(f"          fix: {c.fix}")
    if not ok:
        print("no usable region: nothing can be allocated until the problems above are fixed"
              if not reports else "some checks failed: see the fixes above")
        if not reports and not ctx.simulated:
            print("to try pynq_alloc without hardware meanwhile: PYNQ_ALLOC_BACKEND=sim "
                  "(or `pynq-alloc info --backend sim`), a simulator of the driver's files")
    return 0 if ok else 1


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


def cmd_selftest(ctx: Context, as_json: bool) -> int:
    results = [selftest_region(ctx.backend, r) for r in ctx.backend.regions()]
    ok = all(r["ok"] for r in results)
    if as_json:
        print(json.dumps({**ctx.json_head(), "ok": ok, "regions": results}, indent=2))
    else:
        print(f"pynq-alloc {__version__} selftest {ctx.banner()}")
        where = " (simulated)" if ctx.simulated else ""
        for r in results:
            print(f"{'PASS' if r['ok'] else 'FAIL'}: {r['region']}{where}: {', '.join(r['steps'])}"
                  + (f" -- {r['error']}" if not r["ok"] else ""))
    return 0 if ok else 1


def cmd_bench(backend: UdmabufBackend, quick: bool, strict: bool,
              simulated: bool = False) -> int:
    """Every benchmark, each line printed as it is measured. Exit 0 once all have
    run (a benchmark reports; a missed target is in its line), 1 with --strict
    when a target is missed."""
    from .bench import run_all

    found = regions(backend)
    if not found:
        print("pynq-alloc: error: no region to benchmark", file=sys.stderr)
        return 2
    first = found[0]
    kind = ("simulated u-dma-buf files, backend sim" if simulated
            else f"u-dma-buf driver, {first.device_path}")
    print(f"pynq-alloc bench{' --quick' if quick else ''} on {first.name} "
          f"({human_size(first.size)}, {human_size(first.free)} free; {kind})", flush=True)
    results = run_all(backend, quick=quick, out=lambda line: print(line, flush=True))
    met = sum(r.ok for r in results)
    print(f"bench: {met} of {len(results)} targets met")
    return 1 if strict and met < len(results) else 0


def _unreadable_dtb_hint(path: str, errno_value: Optional[int]) -> str:
    """Why the booted tree could not be read, and what to do instead."""
    if errno_value == errno.ENOENT:
        return (f" (this system did not boot with a device tree, e.g. a PC or an ACPI "
                f"board, so there is no {path}: name a DTB file, "
                f"`pynq-alloc check-dtb board.dtb`)")
    if errno_value in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        return " (the booted tree is readable by root only: `sudo pynq-alloc check-dtb`)"
    return " (name a DTB file instead: `pynq-alloc check-dtb board.dtb`)"


def cmd_check_dtb(files: Sequence[str], as_json: bool, page_size: int,
                  cma_alignment: int) -> int:
    from .dtcheck import RULES, inspect

    reports: List[Dict[str, Any]] = []
    for path in files:
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError as exc:
            hint = _unreadable_dtb_hint(path, exc.errno) if path == DEFAULT_DTB else ""
            raise DeviceError(f"cannot read {path}: {exc.strerror}{hint}", exc.errno or 0,
                              path) from exc
        problems, nodes = inspect(blob, page_size=page_size, cma_alignment=cma_alignment,
                                  source=path)
        reports.append({"file": path, "ok": not problems,
                        "problems": [vars(p) for p in problems], "u_dma_buf_nodes": nodes})
    if as_json:
        print(json.dumps({"rules": list(RULES), "files": reports}, indent=2))
    else:
        for report in reports:
            found: List[Dict[str, str]] = report["problems"]
            if not found:
                print(f"{report['file']}: all {len(RULES)} rules hold"
                      + ("" if report["u_dma_buf_nodes"] else
                         " (but it has no u-dma-buf node: the driver makes no region from "
                         "this tree, only from udmabufN= module parameters; add pools "
                         "with pynq-alloc-dtb or the board files)"))
                continue
            print(f"{report['file']}: {len(found)} problem(s)")
            for p in found:
                print(f"  {p['node']}: {p['message']} [{p['rule']}]")
    return 0 if all(r["ok"] for r in reports) else 1


#: The flattened tree the kernel booted with (root-only), as the bootloader handed it over.
DEFAULT_DTB = "/sys/firmware/fdt"


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number (decimal, or 0x... hex)") from None


def _power_of_two(text: str) -> int:
    value = _int(text)
    if value < 4096 or value & (value - 1):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a power of two of at least 4096 (arm64 kernels use 4096, 16384 "
            f"or 65536 bytes per page; CMA aligns pools to a pageblock, 0x400000 with 4 KiB "
            f"pages)")
    return value


def _para(text: str) -> str:
    """A paragraph wrapped as the other help text (the formatter keeps line breaks)."""
    return textwrap.fill(text, 84)


def build_parser() -> argparse.ArgumentParser:
    def common(suppress: bool) -> argparse.ArgumentParser:
        # On the subcommands the options default to SUPPRESS so that an option given
        # before the subcommand is not overwritten by the subcommand's default.
        shared = argparse.ArgumentParser(add_help=False)
        shared.add_argument(
            "--backend", choices=BACKEND_NAMES,
            default=argparse.SUPPRESS if suppress else None,
            help="udmabuf (the driver) or sim (the simulator); "
                 "default: $PYNQ_ALLOC_BACKEND, else udmabuf")
        return shared

    def json_option(parser: argparse.ArgumentParser, suppress: bool) -> None:
        parser.add_argument("--json", action="store_true",
                            default=argparse.SUPPRESS if suppress else False,
                            help="machine-readable output (exact numbers: bytes, addresses)")

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="pynq-alloc", description=DESCRIPTION,
                                     epilog=EPILOG, formatter_class=raw,
                                     parents=[common(False)])
    parser.add_argument("--version", action="version", version=f"pynq-alloc {__version__}")
    json_option(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser(
        "info", parents=[common(True)], formatter_class=raw, epilog=EPILOG,
        help="regions, driver version, coherency, usage; or why there is none",
        description=_para("The regions the driver offers (size, physical address, coherency, "
                          "pool usage by every process) and the checks behind them: kernel module, "
                          "device-tree nodes, device files and who may open them, the ledger "
                          "directory. Each failed check says its fix; exit status 1 then."))
    json_option(info, True)
    selftest = sub.add_parser(
        "selftest", parents=[common(True)], formatter_class=raw, epilog=EPILOG,
        help="allocate, write, flush, read back, free",
        description=_para("On every region: allocate, write, flush, read the memory back through "
                          "a second mapping of the device, invalidate, free."))
    json_option(selftest, True)
    bench = sub.add_parser("bench", parents=[common(True)], help="benchmarks, printed as ratios")
    json_option(bench, True)  # accepted only to be refused with the reason
    bench.add_argument("--quick", action="store_true", help="smaller sizes, a few seconds")
    bench.add_argument("--strict", action="store_true",
                       help="exit 1 when a target is missed (default: report only)")
    dtb = sub.add_parser(
        "check-dtb", formatter_class=raw,
        help="check a DTB's DMA pools and u-dma-buf nodes",
        description=_para("Check the rules the kernel and u-dma-buf need of a flattened device "
                          "tree: pools inside RAM, disjoint, page- and CMA-aligned, unit address = "
                          "reg, /reserved-memory cells and ranges, memory-region phandles, buffers "
                          "that fit their pool as the kernel allocates them, unique device names "
                          "and minors. Exit status 1 when a rule is broken."),
        epilog="To check a source, compile it first: dtc -I dts -O dtb -o board.dtb board.dts;\n"
               "a source with #include goes through cpp first: cpp -nostdinc -undef -D__DTS__\n"
               "-x assembler-with-cpp -I <include dirs> board.dts -o board.pre.dts, then dtc.")
    dtb.add_argument("dtb", nargs="*", default=[DEFAULT_DTB],
                     help=f"DTB files (default: {DEFAULT_DTB}, the tree this kernel booted)")
    dtb.add_argument("--page-size", type=_power_of_two, default=4096,
                     help="the kernel's page size in bytes (default 4096)")
    dtb.add_argument("--cma-alignment", type=_power_of_two, default=4 << 20,
                     help="CMA pool alignment in bytes: the kernel's pageblock, 4 MiB with "
                          "4 KiB pages (default 0x400000)")
    json_option(dtb, True)
    return parser


def _run(argv: Optional[Sequence[str]], roots: Optional[Roots]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench" and args.json:
        parser.error("bench prints text only, one line per result as it is measured: "
                     "drop --json (it is for info, selftest and check-dtb)")
    if args.command == "check-dtb" and args.backend is not None:
        parser.error(f"check-dtb reads DTB files only and runs on no backend: drop "
                     f"--backend {args.backend} (it is for info, selftest and bench)")
    try:
        if args.command == "check-dtb":
            return cmd_check_dtb(args.dtb, args.json, args.page_size, args.cma_alignment)
        ctx = Context(args.backend, roots)
        if args.command == "info":
            return cmd_info(ctx, args.json)
        if args.command == "selftest":
            return cmd_selftest(ctx, args.json)
        if ctx.simulated:
            print(f"pynq-alloc bench {ctx.banner()}", flush=True)
        return cmd_bench(ctx.backend, args.quick, args.strict, ctx.simulated)
    except DriverNotFoundError as exc:
        print(f"pynq-alloc: error: {exc}\n`pynq-alloc info` diagnoses each step and gives "
              f"its fix.", file=sys.stderr)
        return 2
    except PynqAllocError as exc:
        print(f"pynq-alloc: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Optional[Sequence[str]] = None, *, roots: Optional[Roots] = None) -> int:
    """The ``pynq-alloc`` command; ``roots`` points the driver checks at another tree."""
    try:
        status = _run(argv, roots)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        # The reader went away (`pynq-alloc info --json | head`): end quietly, as a
        # process killed by SIGPIPE would, with nothing left to flush into the pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
