"""Every board kas file (kas/zcu102.yml, ...) under real bitbake, on scarthgap with
meta-arm and meta-xilinx-core at the commits of the board's lock file: `bitbake -p`,
`bitbake -g pynq-alloc-image`, and what bitbake expands for the image and for
pynq-alloc-board-dtb (`bitbake -e`): the DTB recipe is in the image's graph with its
deploy task, after the kernel's configure (the kernel tree it takes the board dts
from), its include path is that kernel tree's, and system.dtb is on the card.

Not part of `make test` (CI reaches neither GitHub nor yoctoproject):
`make test-layer-bitbake` checks out the repositories of kas/zcu102.yml's lock file
into build/layer/src/xilinx/ (all board lock files pin the same commits:
test_board_kas_dtb.py) and runs this in one build directory for all boards
(build/layer/bitbake-xilinx/: each board's local.conf replaces the last one; the
recipe parse is redone, the shared code-parser cache makes it faster). The local.conf lines are the kas files' own
(local_conf_header of kas/base.yml, kas/xilinx.yml and the board file, in kas's key
order); BB_NO_NETWORK = "1": nothing is fetched, so the kernel is not built and the
DTB itself is checked by test_board_kas_dtb.py. About 3 minutes a board on 2 cores."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any, Dict

import bitbake_runner
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = Path(os.environ.get("LAYER_YOCTO_SRC", REPO / "build" / "layer" / "src")) / "xilinx"
BOARDS = ("zcu102", "zcu104", "kv260", "ultra96v2", "rfsoc4x2", "zc702", "pynq-z1", "pynq-z2")
IMAGE = "pynq-alloc-image"


def kas_file(name: str) -> Dict[str, Any]:
    data = yaml.safe_load((REPO / name).read_text())
    cfg: Dict[str, Any] = {"local_conf_header": {}}
    for inc in data.get("header", {}).get("includes", []):
        cfg["local_conf_header"].update(kas_file(inc)["local_conf_header"])
    cfg["local_conf_header"].update(data.get("local_conf_header", {}))
    if "machine" in data:
        cfg["machine"] = data["machine"]
    return cfg


def run_bitbake(board: str, *command: str) -> subprocess.CompletedProcess:
    cfg = kas_file(f"kas/{board}.yml")
    conf = "\n".join(cfg["local_conf_header"][k] for k in sorted(cfg["local_conf_header"]))
    layers = [str(SRC / p) for p in ("meta-arm/meta-arm", "meta-arm/meta-arm-toolchain",
                                     "meta-xilinx/meta-xilinx-core")]
    return bitbake_runner.run_bitbake(
        SRC, ("openembedded-core", "bitbake", "meta-arm", "meta-xilinx"), "zcu102.lock.yml",
        REPO / "build" / "layer" / "bitbake-xilinx", cfg["machine"], conf, layers, command)


def variables(board: str, recipe: str) -> Dict[str, str]:
    proc = run_bitbake(board, "bitbake", "-e", recipe)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {m.group(1): m.group(2) for m in
            re.finditer(r'^(?:export )?([A-Za-z0-9_\-:/.]+)="(.*)"$', proc.stdout, re.M)}


@pytest.mark.parametrize("board", BOARDS)
def test_board_parses_its_image_graph_has_the_board_dtb_and_bitbake_e_agrees(board):
    proc = run_bitbake(board, "bitbake", "-p")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ERROR:" not in out, out[-4000:]
    proc = run_bitbake(board, "bitbake", "-g", IMAGE)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    builddir = REPO / "build" / "layer" / "bitbake-xilinx"
    built = set((builddir / "pn-buildlist").read_text().split())
    assert {"pynq-alloc-board-dtb", "u-dma-buf", "python3-pynq-alloc", IMAGE} <= built, \
        sorted(built)
    tasks = (builddir / "task-depends.dot").read_text()
    assert '"pynq-alloc-board-dtb.do_deploy"' in tasks
    # do_compile runs after the kernel's do_configure (devicetree.bbclass, KERNEL_INCLUDE)
    assert re.search(r'"pynq-alloc-board-dtb\.do_compile" -> "linux-xlnx\.do_configure"', tasks), \
        "pynq-alloc-board-dtb:do_compile does not wait for the kernel tree"
    print(f"{board}: bitbake -g {IMAGE}: {len(built)} recipes")
    # in the same test: each board's local.conf means a new parse
    dtb_recipe_expands_to_the_kas_files_board_and_the_kernel_tree(board)


def dtb_recipe_expands_to_the_kas_files_board_and_the_kernel_tree(board):
    cfg = kas_file(f"kas/{board}.yml")
    want = dict(re.findall(r'^(PYNQ_ALLOC_\w+) = "([^"]*)"$',
                           "\n".join(cfg["local_conf_header"].values()), re.M))
    v = variables(board, "pynq-alloc-board-dtb")
    for name, value in want.items():
        assert v[name] == value, f"{name} = {v[name]!r}, the kas file sets {value!r}"
    kernel = v["STAGING_KERNEL_DIR"]
    arch = "arm64" if cfg["machine"].startswith("zynqmp") else "arm"
    assert v["ARCH"] == arch
    assert f"{kernel}/arch/{arch}/boot/dts" in v["DT_INCLUDE"].split()
    assert v["PREFERRED_PROVIDER_virtual/dtb"] == "pynq-alloc-board-dtb"
    img = variables(board, IMAGE)
    assert "system.dtb" in img["IMAGE_BOOT_FILES"].split(), img["IMAGE_BOOT_FILES"]
    assert "boot.scr" in img["IMAGE_BOOT_FILES"].split()
    assert "virtual/dtb" in img["WKS_FILE_DEPENDS"].split()
