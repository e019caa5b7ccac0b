"""The QEMU virt DTB: made by the documented command from QEMU's own DTB, with
the layout the QEMU harness and the target tests rely on (CONTRACT: udmabuf0 =
16 MiB no-map, udmabuf1 = 16 MiB CMA, both sync-mode 2, near the top of RAM)."""

from __future__ import annotations

import dttools
import pytest
from pynq_alloc import dtcheck
from pynq_alloc.fdt import Fdt

MiB = 1 << 20


def node_paths(tree: Fdt) -> set[str]:
    return {path for _, path in tree.nodes()}


def buffers(tree: Fdt) -> dict[str, dict]:
    """device-name -> the u-dma-buf node's size, sync-mode and its region."""
    out = {}
    for offset, path in tree.nodes():
        if dtcheck.U_DMA_BUF not in tree.string_list(offset, "compatible"):
            continue
        region = tree.node_by_phandle(tree.cells(offset, "memory-region")[0])
        reg = dtcheck.split_entries(tree.cells(region, "reg"), 2, 2)[0]
        out[tree.string_list(offset, "device-name")[0]] = {
            "path": path,
            "size": dtcheck.join_cells(tree.cells(offset, "size")),
            "sync-mode": tree.cells(offset, "sync-mode"),
            "base": reg[0],
            "region-size": reg[1],
            "no-map": tree.has(region, "no-map"),
            "reusable": tree.has(region, "reusable"),
            "dma-coherent": tree.has(offset, "dma-coherent"),
        }
    return out


def test_build_dtb_writes_a_flattened_tree(virt_dtb):
    assert virt_dtb.read_bytes()[:4] == bytes.fromhex("d00dfeed")


def test_overlay_keeps_every_node_of_qemus_own_dtb(virt_dtb, fresh_qemu_dtb):
    qemu, ours = Fdt(fresh_qemu_dtb.read_bytes()), Fdt(virt_dtb.read_bytes())
    assert node_paths(qemu) <= node_paths(ours)
    for prop in ("#address-cells", "#size-cells", "compatible"):
        assert qemu.prop(0, prop) == ours.prop(0, prop)
    memory = qemu.path_offset("/memory@40000000")
    assert qemu.prop(memory, "reg") == ours.prop(ours.path_offset("/memory@40000000"), "reg")


def test_overlay_adds_the_contract_layout(virt_dtb):
    found = buffers(Fdt(virt_dtb.read_bytes()))
    assert set(found) == {"udmabuf0", "udmabuf1"}
    assert found["udmabuf0"]["no-map"] and not found["udmabuf0"]["reusable"]
    assert found["udmabuf1"]["reusable"] and not found["udmabuf1"]["no-map"]
    for name, node in found.items():
        assert node["size"] == node["region-size"] == 16 * MiB, name
        assert node["sync-mode"] == [2], (
            f"{name}: sync-mode 2 gives write-combine, not Device memory, to O_SYNC maps"
        )
        assert not node["dma-coherent"], name


def test_pools_sit_at_the_top_of_1g_of_ram(virt_dtb):
    found = buffers(Fdt(virt_dtb.read_bytes()))
    ram_end = 0x40000000 + (1 << 30)
    assert found["udmabuf0"]["base"] == ram_end - 16 * MiB == 0x7F000000
    assert found["udmabuf1"]["base"] == ram_end - 32 * MiB == 0x7E000000


@pytest.mark.parametrize("memory,smp", [("512M", "1"), ("2G", "2"), ("6G", "1")])
def test_other_memory_sizes_keep_pools_in_ram_below_4g(tmp_path, memory, smp):
    out = tmp_path / f"virt-{memory}.dtb"
    result = dttools.run(
        [dttools.BUILD_DTB, "--memory", memory, "--smp", smp, "--cpu", "cortex-a53", "--out", out]
    )
    assert result.returncode == 0, result.stderr
    assert [str(p) for p in dtcheck.check(out.read_bytes())] == []
    for node in buffers(Fdt(out.read_bytes())).values():
        assert node["base"] + node["region-size"] <= 1 << 32


@pytest.mark.parametrize(
    "args,complaint",
    [
        (["--memory", "1G", "--smp", "1", "--cpu", "cortex-a53"], "--out"),
        (["--memory", "lots", "--out", "x.dtb"], "--memory"),
        (["--memory", "128M", "--out", "x.dtb"], "160M"),
        (["--machine", "sbsa-ref", "--out", "x.dtb"], "virt"),
        (["--frobnicate"], "unknown argument"),
    ],
)
def test_build_dtb_refuses_bad_arguments_with_a_reason(tmp_path, args, complaint):
    result = dttools.run([dttools.BUILD_DTB, *args], cwd=tmp_path)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr
    assert not (tmp_path / "x.dtb").exists()
