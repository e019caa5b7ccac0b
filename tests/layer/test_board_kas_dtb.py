"""The DTB each board kas file (kas/zcu102.yml, kas/pynq-z2.yml, ...) puts on its SD
card as system.dtb, built from the same inputs by pynq-alloc-board-dtb's own commands,
must hold both DMA pools inside the board's /memory and both u-dma-buf nodes on them.

What bitbake would do, done here with the real tools:
- the board settings (PYNQ_ALLOC_BOARD_DTS, PYNQ_ALLOC_BOARD_DTSO, PYNQ_ALLOC_DTSI,
  MACHINE) are read from the kas file's local.conf lines;
- the recipe's do_configure and its pynq_alloc_apply_overlays postfunc are taken from
  the .bb and run by bash, with their ${VARIABLES} replaced by the values bitbake gives
  (a test fails if they use one not modelled here);
- devicetree.bbclass's do_compile (OE-Core scarthgap) is done as the class does it:
  every .dts in DT_FILES_PATH through cpp with DTC_PPFLAGS and -I for each directory
  of DT_INCLUDE (the recipe's value, KERNEL_INCLUDE globbed as expand_includes does),
  then dtc with DTC_FLAGS + DTC_BFLAGS (DTC_OFLAGS for an overlay) and -i for each;
- the kernel tree (STAGING_KERNEL_DIR) is Debian's linux-source package
  (tests/layer/kernel-dts, given by LAYER_KERNEL_DTS; default linux-source-6.12,
  mainline 6.12), not linux-xlnx 6.6.40 (v2024.2), which meta-xilinx scarthgap builds
  and which CI cannot fetch (GitHub). linux-xlnx's published tree has every board dts
  the kas files name too (looked up file by file, not at the pinned commit; its board
  dts may differ in content from mainline's). Only arch/*/boot/dts/xilinx of the
  kernel is present, which is all a Xilinx board dts includes. The bitbake side (parse, task graph, the recipe's variables) is
  checked by make test-layer-bitbake.
Real cpp, dtc, fdtoverlay (Debian's device-tree-compiler) and pylibfdt."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import libfdt
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KAS = REPO / "kas"
RECIPE_DIR = REPO / "meta-pynq-alloc/dynamic-layers/xilinx/recipes-bsp/pynq-alloc-board-dtb"
(RECIPE,) = RECIPE_DIR.glob("pynq-alloc-board-dtb_*.bb")
DT_DIR = REPO / "device-tree"
# Every board this repository has a pool file for, and its kas file.
BOARDS = {
    "zcu102": "zynqmp/zcu102-pynq-alloc.dtsi",
    "zcu104": "zynqmp/zcu104-pynq-alloc.dtsi",
    "kv260": "zynqmp/kv260-pynq-alloc.dtsi",
    "ultra96v2": "zynqmp/ultra96v2-pynq-alloc.dtsi",
    "rfsoc4x2": "zynqmp/rfsoc4x2-pynq-alloc.dtsi",
    "zc702": "zynq7000/zc702-pynq-alloc.dtsi",
    "pynq-z1": "zynq7000/pynq-z1-pynq-alloc.dtsi",
    "pynq-z2": "zynq7000/pynq-z2-pynq-alloc.dtsi",
}
# devicetree.bbclass (OE-Core scarthgap and wrynose) defaults
DTC_PPFLAGS = ["-nostdinc", "-undef", "-D__DTS__", "-x", "assembler-with-cpp"]
DTC_FLAGS = ["-R", "8", "-b", "0"]
DTC_BFLAGS = ["-p", "0x3000", "-@"]
DTC_OFLAGS = ["-p", "0", "-@", "-H", "epapr"]
KERNEL_INCLUDE = ["{k}/arch/{arch}/boot/dts", "{k}/arch/{arch}/boot/dts/*",
                  "{k}/scripts/dtc/include-prefixes"]


def recipe_text() -> str:
    return RECIPE.read_text()


def shell_function(name: str) -> str:
    m = re.search(r"^%s\(\) \{\n(.*?)^\}" % re.escape(name), recipe_text(), re.M | re.S)
    assert m, f"{RECIPE.name}: no shell function {name}"
    return m.group(1)


def recipe_value(name: str) -> str:
    joined = re.sub(r"\\\n", " ", recipe_text())
    m = re.search(r'^%s\s*\??=\s*"(.*)"\s*$' % re.escape(name), joined, re.M)
    assert m, f"{RECIPE.name}: no {name}"
    return m.group(1)


def board_conf(board: str) -> Dict[str, str]:
    """MACHINE and the PYNQ_ALLOC_* lines of kas/<board>.yml's local.conf."""
    data = yaml.safe_load((KAS / f"{board}.yml").read_text())
    conf = {"MACHINE": data["machine"]}
    for text in data.get("local_conf_header", {}).values():
        for m in re.finditer(r'^(PYNQ_ALLOC_\w+)\s*=\s*"([^"]*)"\s*$', text, re.M):
            conf[m.group(1)] = m.group(2)
    return conf


def kernel_arch(machine: str) -> str:
    # kernel-arch.bbclass: zynq-* machines are arm, zynqmp-* aarch64 -> arm64
    return "arm64" if machine.startswith("zynqmp") else "arm"


def expand(body: str, values: Dict[str, str]) -> str:
    for name, value in values.items():
        body = body.replace("${%s}" % name, value)
    assert "${" not in body, f"{RECIPE.name} uses a variable not modelled here: {body}"
    return body


def run_shell(body: str, cwd: Path) -> subprocess.CompletedProcess:
    script = 'bbfatal() { echo "ERROR: $*" >&2; exit 1; }\nset -e\n' + body
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True)


def values_for(conf: Dict[str, str], work: Path) -> Dict[str, str]:
    dts = conf["PYNQ_ALLOC_BOARD_DTS"]
    # PYNQ_ALLOC_BOARD_DTB's default: the board dts's base name + "-pynq-alloc"
    assert "os.path.splitext(os.path.basename(d.getVar('PYNQ_ALLOC_BOARD_DTS')))[0]" \
        in recipe_value("PYNQ_ALLOC_BOARD_DTB")
    return {"DT_FILES_PATH": str(work / "pynq-alloc-board"), "S": str(DT_DIR),
            "B": str(work / "build"),
            "PYNQ_ALLOC_BOARD_DTS": dts,
            "PYNQ_ALLOC_BOARD_DTSO": conf.get("PYNQ_ALLOC_BOARD_DTSO", ""),
            "PYNQ_ALLOC_DTSI": conf["PYNQ_ALLOC_DTSI"],
            "PYNQ_ALLOC_BOARD_DTB": os.path.splitext(os.path.basename(dts))[0] + "-pynq-alloc",
            "PYNQ_ALLOC_LOCAL_DIR": str(RECIPE_DIR / "files")}


def includes(values: Dict[str, str], kernel: Path, arch: str) -> List[str]:
    """DT_INCLUDE as devicetree.bbclass's expand_includes() sees it: globbed, dirs only."""
    kinc = " ".join(p.format(k=kernel, arch=arch) for p in KERNEL_INCLUDE)
    dt_include = expand(recipe_value("DT_INCLUDE"), {**values, "KERNEL_INCLUDE": kinc})
    found: List[str] = []
    for pattern in dt_include.split():
        for g in sorted(glob.glob(pattern)):
            if os.path.isdir(g) and g not in found:
                found.append(g)
    return found


def devicetree_compile(dts: Path, incs: List[str], build: Path) -> Path:
    pp = build / (dts.name + ".pp")
    proc = subprocess.run(["cpp", *DTC_PPFLAGS, *[f"-I{i}" for i in incs], "-o", str(pp),
                           str(dts)], capture_output=True, text=True)
    assert proc.returncode == 0, f"cpp {dts.name}: {proc.stderr}"
    overlay = any(line.startswith("/plugin/;") for line in pp.read_text().splitlines())
    out = build / (dts.stem + (".dtbo" if overlay else ".dtb"))
    proc = subprocess.run(["dtc", *DTC_FLAGS, *(DTC_OFLAGS if overlay else DTC_BFLAGS),
                           *[a for i in incs for a in ("-i", i)], "-o", str(out),
                           "-I", "dts", "-O", "dtb", str(pp)],
                          cwd=build, capture_output=True, text=True)
    assert proc.returncode == 0, f"dtc {dts.name}: {proc.stderr}"
    return out


def build_board_dtb(board: str, kernel: Path, work: Path) -> Path:
    conf = board_conf(board)
    values = values_for(conf, work)
    Path(values["DT_FILES_PATH"]).mkdir(parents=True)   # do_configure[cleandirs]
    build = Path(values["B"])
    build.mkdir()                                       # do_compile[cleandirs]
    proc = run_shell(expand(shell_function("do_configure"), values), work)
    assert proc.returncode == 0, proc.stderr
    incs = includes(values, kernel, kernel_arch(conf["MACHINE"]))
    for dts in sorted(Path(values["DT_FILES_PATH"]).iterdir()):
        if dts.suffix == ".dts":
            devicetree_compile(dts, incs, build)
    proc = run_shell(expand(shell_function("pynq_alloc_apply_overlays"), values), build)
    assert proc.returncode == 0, proc.stderr
    # what devicetree_do_deploy installs, and system.dtb links to
    dtbs = sorted(p.name for p in build.iterdir() if p.suffix in (".dtb", ".dtbo"))
    assert dtbs == [values["PYNQ_ALLOC_BOARD_DTB"] + ".dtb"], dtbs
    return build / dtbs[0]


# --- reading the DTB with libfdt ---------------------------------------------------

def cells(fdt: libfdt.Fdt, node: int, prop: str) -> List[int]:
    raw = fdt.getprop(node, prop)
    return [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]


def ranges(fdt: libfdt.Fdt, node: int, ac: int, sc: int) -> List[Tuple[int, int]]:
    words = cells(fdt, node, "reg")
    out = []
    for i in range(0, len(words), ac + sc):
        num = lambda ws: sum(w << (32 * (len(ws) - 1 - j)) for j, w in enumerate(ws))  # noqa: E731
        out.append((num(words[i:i + ac]), num(words[i + ac:i + ac + sc])))
    return out


def subnodes(fdt: libfdt.Fdt, node: int) -> List[int]:
    found = []
    child = fdt.first_subnode(node, quiet=(libfdt.NOTFOUND,))
    while child >= 0:
        found.append(child)
        child = fdt.next_subnode(child, quiet=(libfdt.NOTFOUND,))
    return found


def has(fdt: libfdt.Fdt, node: int, prop: str) -> bool:
    # with quiet=, libfdt returns the (negative) error number instead of raising
    return not isinstance(fdt.getprop(node, prop, quiet=(libfdt.NOTFOUND,)), int)


def string(fdt: libfdt.Fdt, node: int, prop: str) -> str:
    return fdt.getprop(node, prop).as_str()


def inspect(dtb: Path) -> Dict[str, object]:
    fdt = libfdt.Fdt(dtb.read_bytes())
    root = fdt.path_offset("/")
    ac, sc = cells(fdt, root, "#address-cells")[0], cells(fdt, root, "#size-cells")[0]
    memory = [r for n in subnodes(fdt, root)
              if has(fdt, n, "device_type") and string(fdt, n, "device_type") == "memory"
              for r in ranges(fdt, n, ac, sc)]
    resv = fdt.path_offset("/reserved-memory")
    pools: Dict[int, Tuple[str, str, Tuple[int, int]]] = {}   # phandle -> (name, kind, reg)
    for n in subnodes(fdt, resv):
        if has(fdt, n, "compatible") and string(fdt, n, "compatible") == "shared-dma-pool":
            kind = "no-map" if has(fdt, n, "no-map") else "reusable" if has(fdt, n, "reusable") else "?"
            (reg,) = ranges(fdt, n, ac, sc)
            pools[fdt.get_phandle(n)] = (fdt.get_name(n), kind, reg)
    buffers: Dict[str, Tuple[str, int]] = {}   # device-name -> (pool kind, size)
    for n in subnodes(fdt, root):
        if has(fdt, n, "compatible") and string(fdt, n, "compatible") == "ikwzm,u-dma-buf":
            (phandle,) = cells(fdt, n, "memory-region")
            assert phandle in pools, f"{fdt.get_name(n)}: memory-region {phandle} is no pool"
            buffers[string(fdt, n, "device-name")] = (pools[phandle][1], cells(fdt, n, "size")[0])
    return {"model": string(fdt, root, "model"), "compatible": fdt.getprop(root, "compatible").as_stringlist(),
            "memory": memory, "pools": list(pools.values()), "buffers": buffers}


# --- the tests ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def kernel() -> Path:
    for tool in ("cpp", "dtc", "fdtoverlay"):
        assert shutil.which(tool), f"{tool} not found: install cpp and device-tree-compiler"
    where = os.environ.get("LAYER_KERNEL_DTS")
    assert where, ("LAYER_KERNEL_DTS is not set: run make test-layer (it fetches the kernel's "
                   "dts with tests/layer/kernel-dts), or set it to a kernel tree")
    tree = Path(where)
    assert (tree / "arch/arm64/boot/dts/xilinx").is_dir(), \
        f"LAYER_KERNEL_DTS={where} has no arch/arm64/boot/dts/xilinx: run tests/layer/kernel-dts"
    return tree


def test_every_board_of_device_tree_has_a_kas_file():
    named = {str(p.relative_to(DT_DIR)) for d in ("zynqmp", "zynq7000")
             for p in (DT_DIR / d).glob("*-pynq-alloc.dtsi")}
    assert set(BOARDS.values()) == named, "a board file of device-tree/ has no kas/<board>.yml"
    for board, dtsi in BOARDS.items():
        conf = board_conf(board)
        assert conf["PYNQ_ALLOC_DTSI"] == dtsi, board
        assert conf["MACHINE"] == ("zynqmp-common" if dtsi.startswith("zynqmp/") else "zynq-common")
        assert (KAS / f"{board}.lock.yml").is_file(), f"no kas/{board}.lock.yml"
    xilinx = yaml.safe_load((KAS / "xilinx.yml").read_text())["local_conf_header"]
    text = "\n".join(xilinx.values())
    assert 'PREFERRED_PROVIDER_virtual/dtb = "pynq-alloc-board-dtb"' in text
    assert 'IMAGE_BOOT_FILES:append = " system.dtb"' in text


def test_board_lock_files_pin_the_same_commits():
    locks = {p.name: p.read_text() for p in (KAS / f"{b}.lock.yml" for b in BOARDS)}
    assert len(set(locks.values())) == 1, f"the board lock files differ: {sorted(locks)}"


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_dtb_carries_both_pools_inside_memory_and_both_u_dma_buf_nodes(board, kernel, tmp_path):
    dtb = build_board_dtb(board, kernel, tmp_path)
    found = inspect(dtb)
    kinds = sorted(kind for _, kind, _ in found["pools"])
    assert kinds == ["no-map", "reusable"], found
    for name, kind, (base, size) in found["pools"]:
        assert size > 0 and name == f"dma-pool@{base:x}", found
        assert any(lo <= base and base + size <= lo + length for lo, length in found["memory"]), \
            f"{board}: pool {name} ({base:#x}+{size:#x}) is outside /memory {found['memory']}"
        assert base + size <= 1 << 32, f"{board}: pool {name} is above 4 GiB"
    by_kind = {kind: size for _, kind, (_, size) in found["pools"]}
    assert found["buffers"] == {"udmabuf0": ("no-map", by_kind["no-map"]),
                                "udmabuf1": ("reusable", by_kind["reusable"])}, found
    # the board's own tree is the base: its model, and the carrier overlay on the KV260
    if board == "kv260":
        assert found["model"] == "ZynqMP KV260 revB", found["model"]
    elif board in ("pynq-z1", "pynq-z2", "rfsoc4x2"):
        assert "pynq-alloc minimal board dts" in found["model"], found["model"]
    else:
        assert found["compatible"][0].startswith("xlnx,zynq"), found["compatible"]


def test_the_pools_do_not_overlap_what_the_board_dts_reserves(kernel, tmp_path):
    """The K26 SOM dts reserves the PMU firmware's RAM; our pools must stay clear."""
    fdt = libfdt.Fdt(build_board_dtb("kv260", kernel, tmp_path).read_bytes())
    resv = fdt.path_offset("/reserved-memory")
    regs = [(fdt.get_name(n), ranges(fdt, n, 2, 2)[0]) for n in subnodes(fdt, resv)]
    assert any(not name.startswith("dma-pool@") for name, _ in regs), regs
    for i, (a, (abase, asize)) in enumerate(regs):
        for b, (bbase, bsize) in regs[i + 1:]:
            assert abase + asize <= bbase or bbase + bsize <= abase, f"{a} overlaps {b}"


def test_unknown_pool_file_is_an_error_naming_it(tmp_path):
    conf = {**board_conf("zcu102"), "PYNQ_ALLOC_DTSI": "zynqmp/no-such-board.dtsi"}
    values = values_for(conf, tmp_path)
    Path(values["DT_FILES_PATH"]).mkdir()
    proc = run_shell(expand(shell_function("do_configure"), values), tmp_path)
    assert proc.returncode != 0 and "zynqmp/no-such-board.dtsi" in proc.stderr, proc.stderr


def test_unknown_board_dts_is_named_by_the_recipe_before_cpp_runs(kernel, tmp_path):
    """do_compile:prepend, run as bitbake runs a python function (d.getVar, bb.fatal)."""
    body = re.search(r"^python do_compile:prepend\(\) \{\n(.*?)^\}", recipe_text(), re.M | re.S)
    assert body, f"{RECIPE.name}: no python do_compile:prepend"

    class Fatal(Exception):
        pass

    class D:
        def __init__(self, values):
            self.values = values

        def getVar(self, name):
            return self.values.get(name)

    class BB:
        @staticmethod
        def fatal(msg):
            raise Fatal(msg)

    def run(conf):
        values = values_for(conf, tmp_path)
        incs = includes(values, kernel, kernel_arch(conf["MACHINE"]))
        code = "\n".join(line[4:] if line.startswith("    ") else line
                         for line in body.group(1).replace("${ARCH}", "arm64").splitlines())
        exec(code, {"d": D(values), "bb": BB, "os": os,
                    "expand_includes": lambda name, d: set(incs)})

    run(board_conf("kv260"))   # the kernel's SOM dts and carrier overlay: found
    with pytest.raises(Fatal, match="xilinx/zynqmp-no-such-board.dts"):
        run({**board_conf("zcu102"), "PYNQ_ALLOC_BOARD_DTS": "xilinx/zynqmp-no-such-board.dts"})
    with pytest.raises(Fatal, match="no-such-carrier.dtso"):
        run({**board_conf("kv260"), "PYNQ_ALLOC_BOARD_DTSO": "xilinx/no-such-carrier.dtso"})
