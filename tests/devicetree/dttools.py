"""Thin wrappers around the real device-tree tools the tests run.

cpp is called as the kernel's scripts/Makefile.lib does for .dts files
(-nostdinc -undef -D__DTS__ -x assembler-with-cpp), dtc with its default
checks; anything dtc prints on stderr is returned so tests can treat it as a
failure. dt-* come from dtschema in the same venv as this interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEVICE_TREE = REPO / "device-tree"
BINDINGS = DEVICE_TREE / "bindings"
BUILD_DTB = DEVICE_TREE / "qemu-virt" / "build-dtb"
OVERLAY = DEVICE_TREE / "qemu-virt" / "pynq-alloc-virt.dtso"
TESTS = Path(__file__).resolve().parent
BOARDS = TESTS / "boards"
BROKEN = TESTS / "broken"
INCLUDE_DIRS = [DEVICE_TREE / "include", DEVICE_TREE / "zynqmp", DEVICE_TREE / "zynq7000"]
QEMU = os.environ.get("QEMU", "qemu-system-aarch64")

# The one dtc check the overlay turns off, and why: see build-dtb.
OVERLAY_DTC_FLAGS = ["-Wno-avoid_unnecessary_addr_size"]


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (the test venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, **kwargs
    )


def preprocess(source: Path, out: Path, defines: dict[str, str] | None = None) -> None:
    args = ["cpp", "-nostdinc", "-undef", "-D__DTS__", "-x", "assembler-with-cpp"]
    args += [f"-I{d}" for d in INCLUDE_DIRS]
    args += [f"-D{k}={v}" if v else f"-D{k}" for k, v in (defines or {}).items()]
    result = run([*args, "-o", out, source])
    if result.returncode:
        raise AssertionError(f"cpp failed on {source}:\n{result.stderr}")


def compile_dts(
    source: Path,
    workdir: Path,
    *,
    defines: dict[str, str] | None = None,
    dtc_flags: list[str] | None = None,
) -> tuple[Path, str]:
    """Preprocess and compile source; return (dtb, whatever dtc printed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stem = source.name.replace(".", "_")
    pre = workdir / f"{stem}.pre.dts"
    dtb = workdir / f"{stem}.dtb"
    preprocess(source, pre, defines)
    result = run(["dtc", "-I", "dts", "-O", "dtb", *(dtc_flags or []), "-o", dtb, pre])
    if result.returncode:
        raise AssertionError(f"dtc failed on {source}:\n{result.stderr}")
    return dtb, result.stderr


def dtc_warnings_of_dtb(dtb: Path) -> list[str]:
    """dtc's warnings on a compiled tree, decompiled and compiled again, without
    file positions (so two trees' warnings can be compared)."""
    dts = run(["dtc", "-q", "-I", "dtb", "-O", "dts", dtb])
    assert dts.returncode == 0, dts.stderr
    again = run(["dtc", "-I", "dts", "-O", "dtb", "-o", os.devnull, "-"], input=dts.stdout)
    assert again.returncode == 0, again.stderr
    return sorted(line.split(": ", 1)[1] for line in again.stderr.splitlines() if ": " in line)


def dump_qemu_dtb(out: Path, memory: str = "1G", smp: str = "1", cpu: str = "cortex-a53") -> Path:
    result = run(
        [
            QEMU,
            "-M",
            f"virt,dumpdtb={out}",
            "-m",
            memory,
            "-smp",
            smp,
            "-cpu",
            cpu,
            "-display",
            "none",
            "-nodefaults",
        ]
    )
    assert out.exists(), f"{QEMU} did not dump a DTB:\n{result.stdout}{result.stderr}"
    return out
