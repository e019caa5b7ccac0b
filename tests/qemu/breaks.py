#!/usr/bin/env python3
"""Self-tests of the QEMU harness: break one shipped file on purpose, boot, and
check that the run FAILS and says why. Each case is one real boot (`harness.py
test`) on a modified copy, never a mock:

  udev-rule-wrong-group   the layer's udev rule gives the devices to group root
                          instead of dma: the suite's group-dma test must fail
                          (needs the real driver: skipped without a cached module)
  run-ptest-exits-early   run-ptest exits 0 before running anything: fewer results
                          than the package's tests must fail the run
  module-other-kernel     a module whose vermagic names another kernel release:
                          the load fails and the run must fail quoting modprobe

The broken layer is a copy (QEMU_LAYER=<copy>); the base image, the DTB and the
driver cache are shared with build/qemu (symlinks), so a case costs one boot.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LAYER = REPO / "meta-pynq-alloc"
SHARED = ("base", "base-inputs", "apt", "apt-kbuild", "dtb", "udmabuf")


def cached_module(build: Path) -> Optional[Path]:
    found = sorted((build / "udmabuf").glob("*/*/u-dma-buf.ko"))
    return found[-1] if found else None


def case_dir(build: Path, name: str) -> Path:
    """A build dir of its own that shares the expensive stages with `build`."""
    d = build.parent / f"{build.name}-breaks" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for entry in [*SHARED, *(p.name for p in build.glob("headers-*"))]:
        if (build / entry).exists():
            (d / entry).symlink_to((build / entry).resolve())
    return d


def harness(build: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("UDMABUF_SRC", "V")}
    full.update(env)
    return subprocess.run([sys.executable, str(HERE / "harness.py"), "test", "--build-dir",
                           str(build)], env=full, capture_output=True, text=True, timeout=1200)


def layer_copy(tmp: Path) -> Path:
    dst = tmp / "meta-pynq-alloc"
    shutil.copytree(LAYER, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def break_udev_group(layer: Path) -> str:
    changed = []
    for rules in (layer / "recipes-kernel").glob("*/files/*.rules"):
        text = rules.read_text()
        if 'GROUP="dma"' in text:
            rules.write_text(text.replace('GROUP="dma"', 'GROUP="root"'))
            changed.append(rules.name)
    if not changed:
        raise AssertionError("no udev rule of the layer says GROUP=\"dma\": update this case")
    return f"GROUP=\"root\" in {', '.join(changed)}"


def break_run_ptest(layer: Path) -> str:
    found = list(layer.glob("recipes-*/*/*/run-ptest"))
    if not found:
        raise AssertionError("the layer ships no run-ptest: update this case")
    for script in found:
        lines = script.read_text().splitlines(keepends=True)
        script.write_text(lines[0] + "exit 0  # broken on purpose by tests/qemu/breaks.py\n"
                          + "".join(lines[1:]))
    return "`exit 0` as the first command of run-ptest"


def elf_section(data: bytes, wanted: str) -> tuple[int, int]:
    """(offset, size) of section `wanted` of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise AssertionError("not a 64-bit little-endian ELF module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
                for i in range(shnum)]  # name, type, flags, addr, offset, size
    strtab = sections[shstrndx]
    for name_off, _, _, _, offset, size in sections:
        start = strtab[4] + name_off
        if data[start:data.index(b"\0", start)].decode() == wanted:
            return offset, size
    raise AssertionError(f"the module has no {wanted} section")


def other_kernel_module(build: Path, tmp: Path) -> tuple[Path, str]:
    """A module built for another build of the kernel: a copy of one for this
    kernel whose recorded symbol versions (__versions, CONFIG_MODVERSIONS) and
    vermagic release differ from the running kernel's. With modversions the
    kernel ignores the release in vermagic and refuses on the first symbol CRC
    that disagrees, as it does for a module from another kernel build."""
    src = cached_module(build)
    abi = (build / "base/abi").read_text().strip()
    if src is None:  # no driver here: a module of the guest's kernel that needs no other
        src = next(p for p in sorted((build / f"base/kernel/lib/modules/{abi}/kernel").rglob(
            "*.ko")) if b"depends=\0" in p.read_bytes())
    data = bytearray(src.read_bytes())
    # Debian signs its own modules; a changed one with the old signature would be
    # refused for the signature ("Key was rejected by service"), not for the
    # kernel build: drop it (module, signature, struct module_signature, magic).
    magic = b"~Module signature appended~\n"
    if data.endswith(magic):
        sig_len, = struct.unpack_from(">I", data, len(data) - len(magic) - 4)
        del data[len(data) - len(magic) - 12 - sig_len:]
    offset, size = elf_section(bytes(data), "__versions")
    for entry in range(offset, offset + size, 64):  # struct modversion_info: u64 crc, name[56]
        crc, = struct.unpack_from("<Q", data, entry)
        struct.pack_into("<Q", data, entry, crc ^ 0x5A5A5A5A)
    m = re.search(rb"vermagic=(\d+\.\d+\.\d+-)(\d+)(-arm64)", data)
    if not m:
        raise AssertionError(f"{src} has no vermagic= of the form 6.x.y-N-arm64")
    other = str(int(m.group(2)) + 1).zfill(len(m.group(2))).encode()[-len(m.group(2)):]
    data[m.start(2):m.end(2)] = other
    out = tmp / "u-dma-buf.ko"
    out.write_bytes(bytes(data))
    return out, (f"{src.name} with vermagic {m.group(1).decode()}{other.decode()}-arm64 and "
                 f"{size // 64} symbol CRCs of another kernel build")


def expect_failure(proc: subprocess.CompletedProcess, *needles: str) -> Optional[str]:
    """None when the run failed and its report contains every needle; else why not."""
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "the harness PASSED a broken file"
    missing = [n for n in needles if not re.search(n, out)]
    if missing:
        return f"the run failed (rc {proc.returncode}) but its report lacks {missing}:\n" + \
            "\n".join(out.splitlines()[-25:])
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", default=str(REPO / "build/qemu"))
    ap.add_argument("cases", nargs="*", help="run only these cases")
    args = ap.parse_args()
    build = Path(args.build_dir).resolve()
    # The base image, DTB and (if any) driver: the harness builds them once.
    prep = subprocess.run([sys.executable, str(HERE / "harness.py"), "image", "--build-dir",
                           str(build)], capture_output=True, text=True)
    if prep.returncode != 0:
        print(prep.stdout + prep.stderr)
        print("qemu-breaks: 0 passed, 1 failed, 0 skipped")
        return 1
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}

    def case(name: str, body: Callable[[Path, Path], tuple[dict[str, str], str, tuple[str, ...]]],
             needs_driver: bool = False) -> None:
        if args.cases and name not in args.cases:
            return
        if needs_driver and cached_module(build) is None:
            counts["SKIP"] += 1
            print(f"SKIP: {name} (no u-dma-buf module cached: without devices the udev rule "
                  "never runs; UDMABUF_SRC=<driver source> make run builds one)", flush=True)
            return
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            env, what, needles = body(build, Path(tmp))
            d = case_dir(build, name)
            proc = harness(d, env)
            shutil.rmtree(d, ignore_errors=True)
        why = expect_failure(proc, *needles)
        word = "PASS" if why is None else "FAIL"
        counts[word] += 1
        print(f"{word}: {name} ({what}; {time.monotonic() - t0:.0f} s)"
              + (f"\n  {why}" if why else ""), flush=True)

    def udev(build: Path, tmp: Path):
        layer = layer_copy(tmp)
        return ({"QEMU_LAYER": str(layer)}, break_udev_group(layer),
                (r"FAIL: .*test_a_user_in_group_dma_may_allocate",))

    def ptest(build: Path, tmp: Path):
        layer = layer_copy(tmp)
        return ({"QEMU_LAYER": str(layer)}, break_run_ptest(layer), (r"stopped early",))

    def module(build: Path, tmp: Path):
        ko, what = other_kernel_module(build, tmp)
        return ({"UDMABUF_KO": str(ko)}, what,
                (r"module did not load: modprobe .*(Exec format error|[Ii]nvalid module format)",
                 r"disagrees about version of symbol"))

    case("udev-rule-wrong-group", udev, needs_driver=True)
    case("run-ptest-exits-early", ptest)
    case("module-other-kernel", module)
    shutil.rmtree(build.parent / f"{build.name}-breaks", ignore_errors=True)
    print(f"qemu-breaks: {counts['PASS']} passed, {counts['FAIL']} failed, "
          f"{counts['SKIP']} skipped")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
