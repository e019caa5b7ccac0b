"""Session fixtures: the trees every test looks at, built once with the real tools."""

from __future__ import annotations

from pathlib import Path

import dttools
import pytest

# The generic dtsi on its own, in the configurations a board can pick.
GENERIC_CONFIGS: dict[str, tuple[int, str, dict[str, str]]] = {
    # name: (root cells, memory reg, cpp defines)
    "generic-dynamic-64bit": (2, "<0x0 0x40000000 0x0 0x40000000>", {}),
    "generic-dynamic-32bit": (1, "<0x0 0x20000000>", {"PYNQ_ALLOC_ADDRESS_CELLS": "1"}),
    "generic-fixed-coherent": (
        2,
        "<0x0 0x40000000 0x0 0x40000000>",
        {
            "PYNQ_ALLOC_NOMAP_BASE": "7f000000",
            "PYNQ_ALLOC_CMA_BASE": "7c000000",
            "PYNQ_ALLOC_CMA_SIZE": "0x02000000",
            "PYNQ_ALLOC_DMA_COHERENT": "",
        },
    ),
    "generic-cma-only": (
        2,
        "<0x0 0x40000000 0x0 0x40000000>",
        {"PYNQ_ALLOC_CMA_BASE": "7c000000", "PYNQ_ALLOC_NO_NOMAP_POOL": ""},
    ),
    "generic-nomap-only": (
        1,
        "<0x0 0x20000000>",
        {
            "PYNQ_ALLOC_ADDRESS_CELLS": "1",
            "PYNQ_ALLOC_NOMAP_BASE": "1f000000",
            "PYNQ_ALLOC_NO_CMA_POOL": "",
        },
    ),
}
BOARD_STUBS = sorted(dttools.BOARDS.glob("*.dts"))


def generic_wrapper(path: Path, cells: int, memory_reg: str) -> Path:
    path.write_text(
        "/dts-v1/;\n\n/ {\n"
        '\tmodel = "pynq-alloc generic dtsi check";\n\tcompatible = "pynq-alloc,test";\n'
        f"\t#address-cells = <{cells}>;\n\t#size-cells = <{cells}>;\n\n"
        f'\tmemory@0 {{\n\t\tdevice_type = "memory";\n\t\treg = {memory_reg};\n\t}};\n}};\n\n'
        '#include "pynq-alloc.dtsi"\n'
    )
    return path


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("devicetree")


@pytest.fixture(scope="session")
def compiled_sources(workdir) -> dict[str, tuple[Path, str]]:
    """Every full-tree source: name -> (dtb, dtc's stderr)."""
    out: dict[str, tuple[Path, str]] = {}
    for stub in BOARD_STUBS:
        out[stub.stem] = dttools.compile_dts(stub, workdir / "boards")
    for name, (cells, memory_reg, defines) in GENERIC_CONFIGS.items():
        wrapper = generic_wrapper(workdir / f"{name}.dts", cells, memory_reg)
        out[name] = dttools.compile_dts(wrapper, workdir / "generic", defines=defines)
    return out


@pytest.fixture(scope="session")
def fresh_qemu_dtb(workdir) -> Path:
    return dttools.dump_qemu_dtb(workdir / "qemu-virt-1G.dtb")


@pytest.fixture(scope="session")
def virt_dtb(workdir) -> Path:
    """The DTB the QEMU harness boots, made by the documented command."""
    out = workdir / "virt.dtb"
    result = dttools.run(
        [dttools.BUILD_DTB, "--memory", "1G", "--smp", "1", "--cpu", "cortex-a53", "--out", out]
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def processed_schema(workdir) -> Path:
    """Our binding plus dtschema's core schemas (reserved-memory among them)."""
    out = workdir / "processed-schema.json"
    result = dttools.run([dttools.venv_tool("dt-mk-schema"), "-j", dttools.BINDINGS])
    assert result.returncode == 0 and not result.stderr, result.stderr
    out.write_text(result.stdout)
    return out
