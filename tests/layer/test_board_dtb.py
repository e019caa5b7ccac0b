"""The board DTB that meta-xilinx's device-tree recipe builds with our append
(classes-recipe/pynq_alloc_board_dtsi.bbclass), made here by the class's own
do_configure commands and devicetree.bbclass's compile steps, for every board of
device-tree/: both DMA pools and both u-dma-buf nodes must be in the DTB.

What stands in for bitbake: the shell body of do_configure:append is taken from the
class and its ${VARIABLES} are replaced by the values bitbake would give (a test
fails if the body uses one not listed here); the board's top-level .dts is the
memory-map stub of tests/devicetree/boards/ without its last #include (the upstream
kernel dts is not available offline); cpp and dtc run with devicetree.bbclass's
default DTC_PPFLAGS/DTC_FLAGS/DTC_BFLAGS (OE-Core, both series) and the class's
DT_INCLUDE. Real cpp, dtc and fdtget (Debian's device-tree-compiler)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
CLASS = REPO / "meta-pynq-alloc/classes-recipe/pynq_alloc_board_dtsi.bbclass"
DT_DIR = REPO / "device-tree"
STUBS = sorted((REPO / "tests/devicetree/boards").glob("*.dts"))
# devicetree.bbclass defaults (DT_RESERVED_MAP 8, DT_BOOT_CPU 0, DT_PADDING_SIZE 0x3000)
DTC_PPFLAGS = ["-nostdinc", "-undef", "-D__DTS__", "-x", "assembler-with-cpp"]
DTC_FLAGS = ["-R", "8", "-b", "0", "-p", "0x3000", "-@"]
MARKER = "/* pynq-alloc: PYNQ_ALLOC_DTSI */"


def configure_append() -> str:
    text = CLASS.read_text()
    m = re.search(r"^do_configure:append\(\) \{\n(.*?)^\}", text, re.M | re.S)
    assert m, f"{CLASS.name}: no do_configure:append"
    return m.group(1)


def run_configure(dt_files_path: Path, base_dts: str, dtsi: str) -> subprocess.CompletedProcess:
    values = {"DT_FILES_PATH": str(dt_files_path), "BASE_DTS": base_dts,
              "PYNQ_ALLOC_DTSI": dtsi, "PYNQ_ALLOC_DT_DIR": str(DT_DIR)}
    body = configure_append()
    for name, value in values.items():
        body = body.replace("${%s}" % name, value)
    assert "${" not in body, f"do_configure:append uses a variable not modelled here: {body}"
    script = 'bbfatal() { echo "ERROR: $*" >&2; exit 1; }\nset -e\n' + body
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def board_dtsi(stub: Path) -> str:
    """The board file the stub includes, as PYNQ_ALLOC_DTSI names it (zynqmp/...)."""
    name = re.findall(r'^#include "([\w\-.]+)"\s*$', stub.read_text(), re.M)[-1]
    (found,) = [p for p in DT_DIR.glob(f"*/{name}")]
    return str(found.relative_to(DT_DIR))


def board_top_dts(stub: Path, dest: Path) -> Path:
    """The stub without its last #include: a board's top-level .dts as the user gives it."""
    lines = stub.read_text().splitlines(keepends=True)
    last = max(i for i, ln in enumerate(lines) if ln.startswith("#include"))
    dest.write_text("".join(lines[:last] + lines[last + 1:]))
    return dest


def compile_dtb(dts: Path) -> Path:
    includes = [DT_DIR, DT_DIR / "include"]  # the class's DT_INCLUDE
    pp = dts.with_suffix(".dts.pp")
    subprocess.run(["cpp", *DTC_PPFLAGS, *[f"-I{i}" for i in includes], "-o", str(pp),
                    str(dts)], check=True, capture_output=True, text=True)
    dtb = dts.with_suffix(".dtb")
    proc = subprocess.run(["dtc", *DTC_FLAGS, *[a for i in includes for a in ("-i", str(i))],
                           "-o", str(dtb), "-I", "dts", "-O", "dtb", str(pp)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return dtb


def fdtget(dtb: Path, *args: str) -> str:
    proc = subprocess.run(["fdtget", str(dtb), *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"fdtget {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def pools_and_buffers(dtb: Path) -> Dict[str, Dict[str, str]]:
    phandles: Dict[str, str] = {}
    pools: Dict[str, str] = {}
    for node in fdtget(dtb, "-l", "/reserved-memory").split():
        path = f"/reserved-memory/{node}"
        props = fdtget(dtb, "-p", path).split()
        if "compatible" in props and fdtget(dtb, path, "compatible") == "shared-dma-pool":
            kind = "no-map" if "no-map" in props else "reusable" if "reusable" in props else "?"
            pools[node] = kind
            if "phandle" in props:
                phandles[fdtget(dtb, path, "phandle")] = node
    buffers: Dict[str, str] = {}
    for node in fdtget(dtb, "-l", "/").split():
        props = fdtget(dtb, "-p", f"/{node}").split()
        if "compatible" in props and fdtget(dtb, f"/{node}", "compatible") == "ikwzm,u-dma-buf":
            region = phandles.get(fdtget(dtb, f"/{node}", "memory-region"), "?")
            buffers[fdtget(dtb, f"/{node}", "device-name")] = \
                f"{region} sync-mode {fdtget(dtb, f'/{node}', 'sync-mode')}"
    return {"pools": pools, "buffers": buffers}


@pytest.fixture(scope="module", autouse=True)
def tools():
    for tool in ("cpp", "dtc", "fdtget"):
        assert shutil.which(tool), f"{tool} not found: install cpp and device-tree-compiler"


@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.stem)
def test_board_dtb_from_the_classes_own_commands_carries_both_pools(stub, tmp_path):
    dts = board_top_dts(stub, tmp_path / "system-top.dts")
    proc = run_configure(tmp_path, "system-top", board_dtsi(stub))
    assert proc.returncode == 0, proc.stderr
    found = pools_and_buffers(compile_dtb(dts))
    assert sorted(found["pools"].values()) == ["no-map", "reusable"], found
    by_kind = {kind: node for node, kind in found["pools"].items()}
    assert found["buffers"] == {"udmabuf0": f"{by_kind['no-map']} sync-mode 2",
                                "udmabuf1": f"{by_kind['reusable']} sync-mode 2"}, found


def test_do_configure_run_twice_includes_the_board_file_once(tmp_path):
    stub = next(s for s in STUBS if s.stem == "zcu102")
    dts = board_top_dts(stub, tmp_path / "system-top.dts")
    for _ in range(2):
        assert run_configure(tmp_path, "system-top", "zynqmp/zcu102-pynq-alloc.dtsi").returncode == 0
    text = dts.read_text()
    assert text.count(MARKER) == 1 and text.count("#include") == 1, text
    # a changed PYNQ_ALLOC_DTSI on a re-run replaces the include, never adds to it
    assert run_configure(tmp_path, "system-top", "zynqmp/kv260-pynq-alloc.dtsi").returncode == 0
    lines: List[str] = [ln for ln in dts.read_text().splitlines() if ln.startswith("#include")]
    assert lines == ['#include "zynqmp/kv260-pynq-alloc.dtsi"'], lines
    compile_dtb(dts)


def test_empty_dtsi_leaves_the_board_dts_as_it_was(tmp_path):
    stub = next(s for s in STUBS if s.stem == "zcu102")
    dts = board_top_dts(stub, tmp_path / "system-top.dts")
    before = dts.read_text()
    assert run_configure(tmp_path, "system-top", "").returncode == 0
    assert dts.read_text() == before


def test_a_dtb_config_dtfile_is_an_error_naming_the_fix_not_a_stray_dts(tmp_path):
    (tmp_path / "board.dtb").write_bytes(b"\xd0\x0d\xfe\xed")
    proc = run_configure(tmp_path, "board", "zynqmp/zcu102-pynq-alloc.dtsi")
    assert proc.returncode != 0
    assert "CONFIG_DTFILE" in proc.stderr and "PYNQ_ALLOC_DTSI" in proc.stderr, proc.stderr
    assert not (tmp_path / "board.dts").exists()


def test_unknown_board_file_is_an_error_naming_it(tmp_path):
    board_top_dts(next(s for s in STUBS if s.stem == "zcu102"), tmp_path / "system-top.dts")
    proc = run_configure(tmp_path, "system-top", "zynqmp/no-such-board.dtsi")
    assert proc.returncode != 0 and "zynqmp/no-such-board.dtsi" in proc.stderr, proc.stderr
