"""`pynq-alloc check-dtb`, the rule checks users run on their own DTB, and the DTB
reader under it (pynq_alloc.fdt, pure Python so a board needs no C binding).

The reader is held against libfdt (pylibfdt, the reference implementation from
dtc's own tree) on every tree the checks look at: the same nodes in the same
order, the same properties byte for byte, the same phandle targets.
"""

from __future__ import annotations

import json
import struct

import dttools
import libfdt
import pytest
from conftest import BOARD_STUBS, GENERIC_CONFIGS
from pynq_alloc import InvalidArgumentError
from pynq_alloc.fdt import Fdt

BROKEN = sorted(dttools.BROKEN.glob("*.dts"))
PYNQ_ALLOC = dttools.venv_tool("pynq-alloc")


def libfdt_view(blob: bytes) -> tuple[list[str], dict[str, dict[str, bytes]], dict[int, str]]:
    """(paths depth first, props by path, phandle -> path) as libfdt reads the blob."""
    fdt = libfdt.Fdt(blob)
    paths: list[str] = []
    props: dict[str, dict[str, bytes]] = {}
    phandles: dict[int, str] = {}

    def walk(offset: int) -> None:
        path = fdt.get_path(offset)
        paths.append(path)
        props[path] = {}
        prop = fdt.first_property_offset(offset, quiet=(libfdt.NOTFOUND,))
        while prop >= 0:
            item = fdt.get_property_by_offset(prop)
            props[path][item.name] = bytes(item)
            prop = fdt.next_property_offset(prop, quiet=(libfdt.NOTFOUND,))
        handle = fdt.get_phandle(offset)
        if handle:
            phandles[handle] = path
        child = fdt.first_subnode(offset, quiet=(libfdt.NOTFOUND,))
        while child >= 0:
            walk(child)
            child = fdt.next_subnode(child, quiet=(libfdt.NOTFOUND,))

    walk(0)
    return paths, props, phandles


def every_tree(compiled_sources, virt_dtb, fresh_qemu_dtb, tmp_path):
    trees = {name: dtb for name, (dtb, _) in compiled_sources.items()}
    trees["qemu-virt"] = virt_dtb
    trees["qemu-own"] = fresh_qemu_dtb
    for source in BROKEN:
        trees[f"broken-{source.stem}"] = dttools.compile_dts(source, tmp_path)[0]
    return trees


def test_reader_sees_what_libfdt_sees_on_every_tree(
    compiled_sources, virt_dtb, fresh_qemu_dtb, tmp_path
):
    trees = every_tree(compiled_sources, virt_dtb, fresh_qemu_dtb, tmp_path)
    assert len(trees) >= len(BOARD_STUBS) + len(GENERIC_CONFIGS) + len(BROKEN) + 2
    for name, dtb in trees.items():
        blob = dtb.read_bytes()
        paths, props, phandles = libfdt_view(blob)
        ours = Fdt(blob)
        assert [path for _, path in ours.nodes()] == paths, name
        for offset, path in ours.nodes():
            assert ours.props(offset) == props[path], f"{name}: {path}"
            assert ours.path_offset(path) == offset, f"{name}: {path}"
        for handle, path in phandles.items():
            target = ours.node_by_phandle(handle)
            assert target is not None and ours.path(target) == path, f"{name}: {handle:#x}"


def struct_at(blob: bytes) -> int:
    """off_dt_struct, from the header."""
    return struct.unpack_from(">I", blob, 8)[0]


@pytest.mark.parametrize(
    "mangle,complaint",
    [
        (lambda b: b[:20], "shorter than the 40-byte header"),
        (lambda b: b"\0\0\0\0" + b[4:], "magic 0x00000000"),
        (lambda b: b[:-64], "the header says"),
        (lambda b: b"/dts-v1/;\n/ { };\n" + bytes(40), ".dts source"),
        # the structure block's first token turned into garbage
        (lambda b: b[: struct_at(b)] + b"\0\0\0\x77" + b[struct_at(b) + 4 :], "unknown token 0x77"),
    ],
)
def test_reader_refuses_a_broken_blob_naming_the_file(virt_dtb, mangle, complaint):
    blob = virt_dtb.read_bytes()
    with pytest.raises(InvalidArgumentError) as err:
        Fdt(mangle(blob), source="board.dtb")
    assert complaint in str(err.value) and "board.dtb" in str(err.value)
    assert "dtc -I dts -O dtb" in str(err.value)


def test_command_passes_the_qemu_tree_and_every_board(compiled_sources, virt_dtb):
    files = [virt_dtb, *(dtb for dtb, _ in compiled_sources.values())]
    result = dttools.run([PYNQ_ALLOC, "check-dtb", *files])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("rules hold") == len(files), result.stdout
    assert not result.stderr


@pytest.mark.parametrize("source", BROKEN, ids=[s.stem for s in BROKEN])
def test_command_rejects_a_broken_tree_naming_node_and_rule(source, tmp_path):
    from test_rules import expectation

    rule, node = expectation(source)
    dtb, _ = dttools.compile_dts(source, tmp_path)
    result = dttools.run([PYNQ_ALLOC, "check-dtb", dtb])
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"  {node}: " in result.stdout and f"[{rule}]" in result.stdout, result.stdout
    report = json.loads(dttools.run([PYNQ_ALLOC, "check-dtb", "--json", dtb]).stdout)
    (found,) = report["files"]
    assert found["ok"] is False
    assert {"node": node, "rule": rule} in [
        {"node": p["node"], "rule": p["rule"]} for p in found["problems"]
    ]


def test_command_explains_a_file_that_is_no_dtb(tmp_path):
    source = tmp_path / "board.dts"
    source.write_text("/dts-v1/;\n/ { };\n")
    result = dttools.run([PYNQ_ALLOC, "check-dtb", source])
    assert result.returncode == 2
    assert str(source) in result.stderr and "dtc -I dts -O dtb" in result.stderr
    missing = dttools.run([PYNQ_ALLOC, "check-dtb", tmp_path / "absent.dtb"])
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr


def test_page_and_cma_alignment_follow_the_options(tmp_path):
    """A 64 KiB-page kernel: 4 MiB-aligned CMA pools are not aligned to its pageblock."""
    source = next(s for s in BOARD_STUBS if s.stem == "zcu102")
    dtb, _ = dttools.compile_dts(source, tmp_path)
    result = dttools.run([PYNQ_ALLOC, "check-dtb", "--page-size", "65536",
                          "--cma-alignment", "0x20000000", dtb])
    assert result.returncode == 1 and "[cma-alignment]" in result.stdout, result.stdout


def test_the_readmes_include_path_example_runs_as_written(tmp_path):
    """The commands device-tree/README.md gives for a source that #includes our files,
    run as written from a checkout's top (here a copy of the two folders it names)."""
    text = (dttools.DEVICE_TREE / "README.md").read_text()
    block = next(b for b in text.split("```")[1::2] if "cpp -nostdinc" in b)
    for folder in ("device-tree", "tests"):
        (tmp_path / folder).symlink_to(dttools.REPO / folder)
    script = block.replace("pynq-alloc check-dtb", f"{PYNQ_ALLOC} check-dtb")
    result = dttools.run(["bash", "-c", f"set -e\n{script}"], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[overlap]" in result.stdout and "Traceback" not in result.stderr, result.stdout


def test_a_tree_without_a_u_dma_buf_node_holds_the_rules_but_says_so(tmp_path, virt_dtb):
    """Nothing in it is wrong, and nothing in it makes a region: the output says both."""
    plain = tmp_path / "plain.dts"
    plain.write_text("/dts-v1/;\n/ { #address-cells = <1>; #size-cells = <1>;\n"
                     "memory@0 { device_type = \"memory\"; reg = <0x0 0x40000000>; }; };\n")
    dtb, _ = dttools.compile_dts(plain, tmp_path)
    result = dttools.run([PYNQ_ALLOC, "check-dtb", dtb, virt_dtb])
    assert result.returncode == 0, result.stdout + result.stderr
    first, second = result.stdout.splitlines()
    assert "rules hold" in first and "no u-dma-buf node" in first, first
    assert "no u-dma-buf node" not in second, second
    report = json.loads(dttools.run([PYNQ_ALLOC, "check-dtb", "--json", dtb, virt_dtb]).stdout)
    assert [sorted(f["u_dma_buf_nodes"]) for f in report["files"]] == [
        [], ["/dma-buffer-0", "/dma-buffer-1"]]
