"""device-tree/pynq-alloc-dtb: the pools of pynq-alloc.dtsi added to any board's DTB.

Run for real: QEMU's own DTB dumped by the installed qemu-system-aarch64 at several
memory sizes, the board memory maps under boards/ compiled without our include,
and small trees compiled by dtc that provoke each refusal. Every result is read
back with pylibfdt (dtcheck) and must break none of dtcheck's rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import libfdt
from pynq_alloc import dtcheck
from pynq_alloc.fdt import Fdt
import dttools
import pytest
from conftest import BOARD_STUBS

TOOL = dttools.DEVICE_TREE / "pynq-alloc-dtb"
MiB, GiB = 1 << 20, 1 << 30
QEMU_RAM_BASE = 0x40000000


def run_tool(*args, cwd: Path | None = None):
    return dttools.run([TOOL, *args], cwd=cwd)


def dtb_from_source(path: Path, text: str) -> Path:
    source = path.with_suffix(".dts")
    source.write_text(text)
    result = dttools.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", path, source])
    assert result.returncode == 0, result.stderr
    return path


def small_board(path: Path, *, cells: int = 2, memory: str = "<0x0 0x40000000 0x0 0x40000000>",
                extra: str = "", memreserve: str = "") -> Path:
    """A minimal board: root cells, one memory node, whatever else the test needs."""
    return dtb_from_source(
        path,
        f"/dts-v1/;\n{memreserve}\n/ {{\n\tcompatible = \"test,board\";\n"
        f"\t#address-cells = <{cells}>;\n\t#size-cells = <{cells}>;\n"
        f"\tmemory@0 {{ device_type = \"memory\"; reg = {memory}; }};\n{extra}}};\n",
    )


def pools(dtb: Path) -> dict[str, dict]:
    """device-name -> the u-dma-buf node and its region, phandles resolved."""
    tree = Fdt(dtb.read_bytes())
    cells = tree.cells(0, "#address-cells")[0]
    out = {}
    for offset, path in tree.nodes():
        if dtcheck.U_DMA_BUF not in tree.string_list(offset, "compatible"):
            continue
        region = tree.node_by_phandle(tree.cells(offset, "memory-region")[0])
        base, size = dtcheck.split_entries(tree.cells(region, "reg"), cells, cells)[0]
        out[tree.string_list(offset, "device-name")[0]] = {
            "node": path,
            "region": tree.path(region),
            "base": base,
            "region-size": size,
            "size": dtcheck.join_cells(tree.cells(offset, "size")),
            "no-map": tree.has(region, "no-map"),
            "reusable": tree.has(region, "reusable"),
            "sync-mode": tree.cells(offset, "sync-mode"),
            "minor-number": tree.cells(offset, "minor-number"),
            "dma-coherent": tree.has(offset, "dma-coherent"),
            "region-compatible": tree.string_list(region, "compatible"),
        }
    return out


def assert_clean(dtb: Path) -> None:
    assert [str(p) for p in dtcheck.check(dtb.read_bytes())] == []


# ------------------------------------------------------------------ QEMU's own DTB

def overlay_route(qemu_dtb: Path, work: Path, nomap: str, cma: str) -> Path:
    """What build-dtb did before the tool: the virt overlay source, cpp, dtc, fdtoverlay."""
    dtbo, warnings = dttools.compile_dts(
        dttools.OVERLAY, work, defines={"PYNQ_ALLOC_NOMAP_BASE": nomap, "PYNQ_ALLOC_CMA_BASE": cma},
        dtc_flags=dttools.OVERLAY_DTC_FLAGS,
    )
    assert warnings == ""
    out = work / "by-overlay.dtb"
    result = dttools.run(["fdtoverlay", "-i", qemu_dtb, "-o", out, dtbo])
    assert result.returncode == 0, result.stderr
    return out


def test_tool_writes_byte_for_byte_what_the_virt_overlay_gives(tmp_path, fresh_qemu_dtb):
    """One description: the tool's nodes are the overlay source's, byte for byte."""
    reference = overlay_route(fresh_qemu_dtb, tmp_path, "7f000000", "7e000000")
    fixed, chosen = tmp_path / "fixed.dtb", tmp_path / "chosen.dtb"
    result = run_tool("--in", fresh_qemu_dtb, "--out", fixed,
                      "--nomap", "16M@0x7f000000", "--cma", "16M@0x7e000000")
    assert result.returncode == 0, result.stderr
    assert fixed.read_bytes() == reference.read_bytes()
    # Automatic placement on 1 GiB lands on the same addresses.
    result = run_tool("--in", fresh_qemu_dtb, "--out", chosen, "--nomap", "16M", "--cma", "16M")
    assert result.returncode == 0, result.stderr
    assert chosen.read_bytes() == reference.read_bytes()
    assert "udmabuf0: no-map pool 16 MiB at 0x7f000000 (chosen)" in result.stderr


def test_build_dtb_output_is_the_tools(tmp_path, virt_dtb, fresh_qemu_dtb):
    """build-dtb is one use of the tool: its DTB differs from the tool's on a fresh dump
    only in the random seeds QEMU writes into /chosen at every dump."""
    ours = tmp_path / "tool.dtb"
    assert run_tool("--in", fresh_qemu_dtb, "--out", ours, "--nomap", "16M",
                    "--cma", "16M").returncode == 0

    def without_seeds(dtb: Path) -> str:
        dts = dttools.run(["dtc", "-q", "-I", "dtb", "-O", "dts", dtb]).stdout
        return re.sub(r"\s*(rng|kaslr)-seed = <[^>]*>;", "", dts)

    assert without_seeds(virt_dtb) == without_seeds(ours)


@pytest.mark.parametrize(
    "memory,nomap,cma",
    [("256M", "16M", "64M"), ("512M", "64M", "128M"), ("1G", "32M", "256M"),
     ("3G", "256M", "512M"), ("6G", "512M", "1G")],
)
def test_pools_go_at_the_top_of_qemu_ram_below_4g(tmp_path, memory, nomap, cma):
    qemu_dtb = dttools.dump_qemu_dtb(tmp_path / f"qemu-{memory}.dtb", memory=memory, smp="2")
    out = tmp_path / "out.dtb"
    result = run_tool("--in", qemu_dtb, "--out", out, "--nomap", nomap, "--cma", cma)
    assert result.returncode == 0, result.stderr
    assert_clean(out)
    found = pools(out)
    ram_end = QEMU_RAM_BASE + int(memory[:-1]) * (GiB if memory[-1] == "G" else MiB)
    top = min(ram_end, 4 * GiB)
    zero, one = found["udmabuf0"], found["udmabuf1"]
    assert zero["no-map"] and not zero["reusable"] and one["reusable"] and not one["no-map"]
    assert zero["base"] + zero["region-size"] == top
    assert one["base"] + one["region-size"] == zero["base"]
    assert one["base"] >= QEMU_RAM_BASE + 128 * MiB
    for node in found.values():
        assert node["size"] == node["region-size"]
        assert node["sync-mode"] == [2]


def test_one_pool_alone_gets_only_its_device(tmp_path, fresh_qemu_dtb):
    out = tmp_path / "cma-only.dtb"
    assert run_tool("--in", fresh_qemu_dtb, "--out", out, "--cma", "64M").returncode == 0
    assert_clean(out)
    found = pools(out)
    assert set(found) == {"udmabuf1"}
    assert found["udmabuf1"]["base"] == 0x80000000 - 64 * MiB


def test_coherent_and_sync_mode_reach_both_devices(tmp_path, fresh_qemu_dtb):
    out = tmp_path / "coherent.dtb"
    result = run_tool("--in", fresh_qemu_dtb, "--out", out, "--nomap", "16M", "--cma", "16M",
                      "--coherent", "--sync-mode", "3")
    assert result.returncode == 0, result.stderr
    for node in pools(out).values():
        assert node["dma-coherent"] and node["sync-mode"] == [3]


def test_out_may_overwrite_in(tmp_path, fresh_qemu_dtb):
    board = tmp_path / "board.dtb"
    board.write_bytes(fresh_qemu_dtb.read_bytes())
    assert run_tool("--in", board, "--out", board, "--cma", "16M").returncode == 0
    assert set(pools(board)) == {"udmabuf1"}


# ------------------------------------------------------------------ the board memory maps

def bare_board(stub: Path, work: Path) -> Path:
    """The board stub without our #include: the board's DTB as its vendor ships it."""
    text = re.sub(r'^#include ".*pynq-alloc.*"\s*$', "", stub.read_text(), flags=re.M)
    return dtb_from_source(work / f"{stub.stem}-bare.dtb", text)


@pytest.mark.parametrize("stub", BOARD_STUBS, ids=lambda p: p.stem)
def test_board_gets_the_same_nodes_as_its_dtsi(tmp_path, compiled_sources, stub):
    """Given the sizes and addresses the board's dtsi picks, the tool writes the same
    pools and devices as including the dtsi in the board's dts does."""
    included = pools(compiled_sources[stub.stem][0])
    args = []
    for device, option in (("udmabuf0", "--nomap"), ("udmabuf1", "--cma")):
        if device in included:
            args += [option, f"{included[device]['region-size']:#x}@{included[device]['base']:#x}"]
    if any(node["dma-coherent"] for node in included.values()):
        args.append("--coherent")
    out = tmp_path / "with-pools.dtb"
    result = run_tool("--in", bare_board(stub, tmp_path), "--out", out, *args)
    assert result.returncode == 0, result.stderr
    assert_clean(out)
    assert pools(out) == included


@pytest.mark.parametrize("stub", BOARD_STUBS, ids=lambda p: p.stem)
def test_board_automatic_placement_avoids_its_reserved_regions(tmp_path, stub):
    bare = bare_board(stub, tmp_path)
    out = tmp_path / "auto.dtb"
    result = run_tool("--in", bare, "--out", out, "--nomap", "32M", "--cma", "64M")
    assert result.returncode == 0, result.stderr
    assert_clean(out)  # includes: inside RAM, no overlap with the board's own regions
    found = pools(out)
    assert found["udmabuf0"]["base"] + 32 * MiB <= 4 * GiB
    tree = Fdt(bare.read_bytes())
    memory = next(o for o, p in tree.nodes() if p.startswith("/memory"))
    cells = tree.cells(0, "#address-cells")[0]
    ram_base = dtcheck.split_entries(tree.cells(memory, "reg"), cells, cells)[0][0]
    assert found["udmabuf1"]["base"] >= ram_base + 128 * MiB


def test_kv260_pools_stay_below_the_pmu_firmware_region(tmp_path):
    stub = next(s for s in BOARD_STUBS if s.stem == "kv260")
    out = tmp_path / "kv260.dtb"
    result = run_tool("--in", bare_board(stub, tmp_path), "--out", out, "--nomap", "16M")
    assert result.returncode == 0, result.stderr
    # RAM below 4 GiB ends at 0x80000000; pmu@7ff00000 takes its last MiB.
    assert pools(out)["udmabuf0"]["base"] == 0x7EE00000


def test_placement_avoids_memreserve_and_static_regions(tmp_path):
    board = small_board(
        tmp_path / "busy.dtb",
        memreserve="/memreserve/ 0x7f000000 0x01000000;",
        extra="\treserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;\n"
              "\t\tfw@7e000000 { reg = <0x0 0x7e000000 0x0 0x01000000>; no-map; };\n\t};\n",
    )
    out = tmp_path / "out.dtb"
    result = run_tool("--in", board, "--out", out, "--nomap", "16M", "--cma", "16M")
    assert result.returncode == 0, result.stderr
    assert_clean(out)
    found = pools(out)
    assert found["udmabuf0"]["base"] == 0x7D000000
    assert found["udmabuf1"]["base"] == 0x7C000000
    tree = Fdt(out.read_bytes())
    assert libfdt.Fdt(out.read_bytes()).num_mem_rsv() == 1
    assert tree.path_offset("/reserved-memory/fw@7e000000") is not None


def test_a_given_no_map_address_needs_only_page_alignment(tmp_path, fresh_qemu_dtb):
    out = tmp_path / "out.dtb"
    result = run_tool("--in", fresh_qemu_dtb, "--out", out, "--nomap", "16M@0x70001000")
    assert result.returncode == 0, result.stderr
    assert_clean(out)
    assert pools(out)["udmabuf0"]["base"] == 0x70001000


def test_32bit_board_gets_one_cell_addresses(tmp_path):
    board = small_board(tmp_path / "zynq.dtb", cells=1, memory="<0x0 0x40000000>")
    out = tmp_path / "out.dtb"
    assert run_tool("--in", board, "--out", out, "--nomap", "16M", "--cma", "64M").returncode == 0
    assert_clean(out)
    found = pools(out)
    assert found["udmabuf0"]["base"] == 0x3F000000
    assert found["udmabuf1"]["base"] == 0x3B000000


def test_existing_dynamic_cma_keeps_room(tmp_path):
    extra = ("\treserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;\n"
             "\t\tlinux,cma { compatible = \"shared-dma-pool\"; reusable; "
             "size = <0x0 0x10000000>; linux,cma-default; };\n\t};\n")
    board = small_board(tmp_path / "cma.dtb", extra=extra)
    out = tmp_path / "out.dtb"
    assert run_tool("--in", board, "--out", out, "--cma", "256M").returncode == 0
    assert_clean(out)


def test_several_pools_of_each_kind_with_a_fixed_address(tmp_path, fresh_qemu_dtb):
    """Any number of pools, each no-map or CMA, some at a given address: udmabuf0 and
    udmabuf1 are the first of each kind, the rest 2, 3, ... (no-map ones first)."""
    out = tmp_path / "many.dtb"
    result = run_tool("--in", fresh_qemu_dtb, "--out", out, "--nomap", "16M", "--cma", "16M",
                      "--cma", "32M", "--nomap", "4M@0x60000000", "--nomap", "8M",
                      "--cma", "8M@0x50000000")
    assert result.returncode == 0, result.stderr
    assert_clean(out)
    found = pools(out)
    want = {"udmabuf0": (16 * MiB, True), "udmabuf1": (16 * MiB, False),
            "udmabuf2": (4 * MiB, True), "udmabuf3": (8 * MiB, True),
            "udmabuf4": (32 * MiB, False), "udmabuf5": (8 * MiB, False)}
    assert {name: (p["size"], p["no-map"]) for name, p in found.items()} == want
    for name, p in found.items():
        assert p["minor-number"] == [int(name[len("udmabuf"):])]
        assert p["node"] == f"/dma-buffer-{name[len('udmabuf'):]}"
        assert p["reusable"] is not p["no-map"]
        assert p["region-size"] == p["size"]
        assert QEMU_RAM_BASE + 128 * MiB <= p["base"] or p["base"] in (0x60000000, 0x50000000)
        assert p["base"] + p["size"] <= 0x80000000
    assert found["udmabuf2"]["base"] == 0x60000000
    assert found["udmabuf5"]["base"] == 0x50000000
    spans = sorted((p["base"], p["base"] + p["size"]) for p in found.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    # The two first pools sit where they sit without the others (top of RAM).
    assert found["udmabuf0"]["base"] == 0x80000000 - 16 * MiB
    assert found["udmabuf1"]["base"] == 0x80000000 - 32 * MiB


def test_pools_up_to_the_kernels_region_limit(tmp_path, fresh_qemu_dtb):
    out = tmp_path / "sixty-four.dtb"
    result = run_tool("--in", fresh_qemu_dtb, "--out", out, *["--cma", "4M"] * 64)
    assert result.returncode == 0, result.stderr
    assert_clean(out)
    assert len(pools(out)) == 64


# ------------------------------------------------------------------ every refusal

REFUSALS = {
    # name: (board kwargs or a special, tool args, what the message must say)
    "no-pool": ({}, [], "no pool asked for"),
    "size-not-a-size": ({}, ["--cma", "lots"], "'lots' is not a size"),
    "size-not-pages": ({}, ["--cma", "4100"], "multiple of 4 KiB"),
    "size-4g": ({}, ["--cma", "4G"], "smaller than 4 GiB"),
    "nomap-not-power-of-two": ({}, ["--nomap", "24M"], "--nomap 32M or --nomap 16M"),
    "cma-not-pageblocks": ({}, ["--cma", "6M"], "give --cma 8M"),
    "address-misaligned": ({}, ["--cma", "16M@0x70100000"], "not aligned to 4 MiB"),
    "address-outside-ram": ({}, ["--nomap", "16M@0x10000000"], "not inside the board's RAM"),
    "address-above-4g": ({"memory": "<0x0 0x40000000 0x1 0x40000000>"},
                         ["--nomap", "16M@0x100000000"], "32-bit"),
    "address-overlaps-region": (
        {"extra": "\treserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;\n"
                  "\t\tfw@70000000 { reg = <0x0 0x70000000 0x0 0x100000>; no-map; };\n\t};\n"},
        ["--nomap", "16M@0x70000000"], "overlaps /reserved-memory/fw@70000000"),
    "address-overlaps-memreserve": ({"memreserve": "/memreserve/ 0x70800000 0x1000;"},
                                    ["--cma", "16M@0x70000000"], "overlaps /memreserve/"),
    "pools-overlap-each-other": ({}, ["--nomap", "16M@0x70000000", "--cma", "16M@0x70000000"],
                                 "overlaps the no-map pool"),
    "does-not-fit": ({}, ["--cma", "1G"], "no free 1 GiB stretch"),
    "does-not-fit-with-keep-low": ({"memory": "<0x0 0x40000000 0x0 0x0a000000>"},
                                   ["--cma", "64M"], "--keep-low"),
    "below-above-4g": ({}, ["--cma", "16M", "--below", "8G"], "first 4 GiB"),
    "no-memory-node": ("no-memory", ["--cma", "16M"], "no /memory node"),
    "not-a-dtb": ("not-a-dtb", ["--cma", "16M"], "not a flattened device tree"),
    "unequal-root-cells": ("unequal-cells", ["--cma", "16M"], "#size-cells = <1>"),
    "reserved-memory-cells-differ": (
        {"extra": "\treserved-memory { #address-cells = <1>; #size-cells = <1>; ranges; };\n"},
        ["--cma", "16M"], "make them equal to the root's"),
    "already-has-u-dma-buf": (
        {"extra": "\tdma-buffer-0 { compatible = \"ikwzm,u-dma-buf\"; size = <0x1000>; };\n"},
        ["--cma", "16M"], "already has u-dma-buf nodes (/dma-buffer-0)"),
    "dynamic-region-squeezed-out": (
        {"memory": "<0x0 0x40000000 0x0 0x20000000>",
         "extra": "\treserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;\n"
                  "\t\tlinux,cma { compatible = \"shared-dma-pool\"; reusable; "
                  "size = <0x0 0x08000000>; linux,cma-default; };\n\t};\n"},
        ["--cma", "448M", "--keep-low", "0"], "/reserved-memory/linux,cma"),
    "missing-input": ("missing", ["--cma", "16M"], "--in"),
    # several pools: each bad input of a further pool is refused like the first's
    "too-many-pools": ({}, ["--cma", "4M"] * 65, "at most 64 reserved-memory regions"),
    "too-many-with-the-boards-regions": (
        {"extra": "\treserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;\n"
                  "\t\tfw@70000000 { reg = <0x0 0x70000000 0x0 0x100000>; no-map; };\n\t};\n"},
        ["--cma", "4M"] * 64, "ask for at most 63 pools"),
    "further-pools-overlap": ({}, ["--nomap", "16M", "--nomap", "4M@0x60000000",
                                   "--nomap", "4M@0x60200000"],
                              "overlaps the no-map pool udmabuf2 (--nomap 4M@0x60000000)"),
    "further-cma-overlaps-first": ({}, ["--cma", "8M@0x60000000", "--cma", "8M@0x60400000"],
                                   "overlaps the CMA pool udmabuf1"),
    "further-address-outside-ram": ({}, ["--nomap", "16M", "--cma", "16M",
                                         "--cma", "16M@0x90000000"],
                                    "--cma 16M@0x90000000: [0x90000000, 0x91000000) is not "
                                    "inside the board's RAM"),
    "further-address-collides-with-region": (
        {"extra": "\treserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;\n"
                  "\t\tfw@70000000 { reg = <0x0 0x70000000 0x0 0x100000>; no-map; };\n\t};\n"},
        ["--nomap", "16M", "--nomap", "1M@0x6ff80000"],
        "--nomap 1M@0x6ff80000: [0x6ff80000, 0x70080000) overlaps /reserved-memory/fw@70000000"),
    "further-bad-size": ({}, ["--nomap", "16M", "--nomap", "24M"], "--nomap 32M or --nomap 16M"),
    "further-cma-bad-size": ({}, ["--cma", "16M", "--cma", "10M"], "give --cma 12M"),
    "further-does-not-fit": ({}, ["--cma", "512M", "--cma", "512M"],
                             "--cma 512M: no free 512 MiB stretch"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_tool_refuses_with_the_reason(tmp_path, name):
    board_spec, args, complaint = REFUSALS[name]
    board = tmp_path / "board.dtb"
    if board_spec == "no-memory":
        dtb_from_source(board, "/dts-v1/;\n/ { #address-cells = <2>; #size-cells = <2>; };\n")
    elif board_spec == "not-a-dtb":
        board.write_text("/dts-v1/;\n/ { };\n")
    elif board_spec == "unequal-cells":
        dtb_from_source(board, "/dts-v1/;\n/ { #address-cells = <2>; #size-cells = <1>;\n"
                               "memory@40000000 { device_type = \"memory\"; "
                               "reg = <0x0 0x40000000 0x40000000>; }; };\n")
    elif board_spec != "missing":
        small_board(board, **board_spec)
    out = tmp_path / "out.dtb"
    result = run_tool("--in", board, "--out", out, *args)
    assert result.returncode == 1, result.stderr
    assert complaint in result.stderr, result.stderr
    assert result.stderr.startswith("pynq-alloc-dtb: error: ")
    assert not out.exists()



@pytest.mark.parametrize("mode", ["0", "4", "7"])
def test_tool_refuses_a_sync_mode_the_driver_refuses(tmp_path, mode):
    """u-dma-buf's probe takes sync-mode 1 to 3 only (SYNC_MODE_MIN/MAX)."""
    board = tmp_path / "board.dtb"
    small_board(board)
    out = tmp_path / "out.dtb"
    result = run_tool("--in", board, "--out", out, "--cma", "16M", "--sync-mode", mode)
    assert result.returncode == 2 and "--sync-mode" in result.stderr, result.stderr
    assert "invalid choice" in result.stderr and not out.exists()
