"""dt-schema: our binding is a valid schema, and our trees satisfy it and the core schemas.

dt-validate exits 0 even when a node fails, so every check here reads its
output: any line is a failure.
"""

from __future__ import annotations

from pathlib import Path

import dttools
import libfdt
import pytest
from conftest import BOARD_STUBS, GENERIC_CONFIGS
from pynq_alloc import dtcheck
from pynq_alloc.fdt import Fdt

BINDING = dttools.BINDINGS / "ikwzm,u-dma-buf.yaml"


def dt_validate(schema: Path, dtb: Path, *extra: str) -> str:
    result = dttools.run([dttools.venv_tool("dt-validate"), *extra, "-s", schema, dtb])
    assert result.returncode == 0, result.stderr
    return (result.stdout + result.stderr).strip()


def only_our_nodes(dtb: Path, out: Path) -> Path:
    """The tree with the root's children cut down to memory, /reserved-memory and
    u-dma-buf nodes (QEMU's own nodes are not ours to validate), root's
    interrupt-parent dropped with the controller it points at."""
    tree = Fdt(dtb.read_bytes())
    fdt = libfdt.Fdt(dtb.read_bytes())
    for child in tree.children(0):
        name = tree.name(child)
        keep = (
            name.startswith("memory@")
            or name == "reserved-memory"
            or dtcheck.U_DMA_BUF in tree.string_list(child, "compatible")
        )
        if not keep:
            fdt.del_node(fdt.path_offset("/" + name))
    fdt.delprop(0, "interrupt-parent", quiet=(libfdt.NOTFOUND,))
    fdt.pack()
    kept = Fdt(bytes(fdt.as_bytearray()))
    assert kept.path_offset("/reserved-memory") is not None
    assert any(dtcheck.U_DMA_BUF in kept.string_list(n, "compatible") for n, _ in kept.nodes())
    out.write_bytes(bytes(fdt.as_bytearray()))
    return out


def test_binding_passes_the_dt_schema_meta_schema():
    result = dttools.run([dttools.venv_tool("dt-doc-validate"), "-u", dttools.BINDINGS, BINDING])
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_meta_schema_check_rejects_a_broken_binding(tmp_path):
    """The meta-schema check is live: a binding without maintainers and with an
    unknown keyword is refused."""
    broken = tmp_path / "ikwzm,u-dma-buf.yaml"
    text = BINDING.read_text()
    text = text.replace(
        "maintainers:\n  - pynq-alloc developers <pynq-alloc@users.noreply.github.com>\n", ""
    )
    text = text.replace(
        "  sync-always:\n    type: boolean\n",
        "  sync-always:\n    type: boolean\n    frobnicate: 3\n",
    )
    broken.write_text(text)
    result = dttools.run([dttools.venv_tool("dt-doc-validate"), "-u", tmp_path, broken])
    output = result.stdout + result.stderr
    assert "maintainers" in output and "frobnicate" in output, output


def test_binding_examples_pass_the_binding(tmp_path, processed_schema):
    example = tmp_path / "example.dts"
    result = dttools.run([dttools.venv_tool("dt-extract-example"), BINDING])
    assert result.returncode == 0, result.stderr
    example.write_text(result.stdout)
    # The wrapper dt-extract-example writes gives each example node
    # #address-cells without reg children; the kernel's dt_binding_check
    # turns this one check off for examples too.
    dtb = tmp_path / "example.dtb"
    compiled = dttools.run(
        ["dtc", "-I", "dts", "-O", "dtb", "-Wno-avoid_unnecessary_addr_size", "-o", dtb, example]
    )
    assert compiled.returncode == 0 and not compiled.stderr, compiled.stderr
    assert dt_validate(processed_schema, dtb) == ""


@pytest.mark.parametrize("name", [stub.stem for stub in BOARD_STUBS] + list(GENERIC_CONFIGS))
def test_tree_passes_binding_and_core_schemas(compiled_sources, processed_schema, name):
    dtb, _ = compiled_sources[name]
    assert dt_validate(processed_schema, dtb) == ""


def test_qemu_tree_nodes_pass_binding_and_core_schemas(virt_dtb, processed_schema, workdir):
    ours = only_our_nodes(virt_dtb, workdir / "virt-ours.dtb")
    assert dt_validate(processed_schema, ours) == ""


def test_binding_is_what_validates_our_nodes(compiled_sources, processed_schema):
    """dt-validate -m lists compatibles no schema matched: ours must not be one,
    else the passes above would prove nothing about u-dma-buf nodes."""
    dtb, _ = compiled_sources["zcu102"]
    output = dt_validate(processed_schema, dtb, "-m")
    assert "ikwzm,u-dma-buf" not in output, output


# Nodes the driver would refuse to probe, or we refuse to accept.
INVALID_NODES = {
    "sync-mode-0": "sync-mode = <0>;",
    "sync-mode-4": "sync-mode = <4>;",
    "sync-direction-3": "sync-direction = <3>;",
    "dma-mask-below-12": "dma-mask = <8>;",
    "dma-mask-above-64": "dma-mask = <65>;",
    "minor-number-256": "minor-number = <256>;",
    "size-zero": None,  # replaces size
    "size-missing": None,
    "unknown-property": "buffer-size = <0x1000>;",
    "two-quirk-mmap-modes": "quirk-mmap-on; quirk-mmap-off;",
    "two-memory-regions": "memory-region = <&pool &pool>;",
}


@pytest.mark.parametrize("case", sorted(INVALID_NODES))
def test_binding_rejects_invalid_u_dma_buf_node(case, tmp_path, processed_schema):
    size = {"size-zero": "size = <0>;", "size-missing": ""}.get(case, "size = <0x100000>;")
    extra = INVALID_NODES[case] or ""
    source = tmp_path / f"{case}.dts"
    source.write_text(
        '/dts-v1/;\n/ {\n\tmodel = "t";\n\tcompatible = "pynq-alloc,test";\n'
        "\t#address-cells = <1>;\n\t#size-cells = <1>;\n"
        '\tmemory@0 { device_type = "memory"; reg = <0x0 0x20000000>; };\n'
        "\treserved-memory {\n\t\t#address-cells = <1>;\n\t\t#size-cells = <1>;\n\t\tranges;\n"
        "\t\tpool: dma-pool@1f000000 {\n"
        '\t\t\tcompatible = "shared-dma-pool";\n\t\t\tno-map;\n'
        "\t\t\treg = <0x1f000000 0x1000000>;\n"
        "\t\t};\n\t};\n"
        f'\tbroken-buffer {{\n\t\tcompatible = "ikwzm,u-dma-buf";\n\t\t{size}\n\t\t{extra}\n'
        + ("" if "memory-region" in extra else "\t\tmemory-region = <&pool>;\n")
        + "\t};\n};\n"
    )
    dtb = tmp_path / f"{case}.dtb"
    compiled = dttools.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", dtb, source])
    assert compiled.returncode == 0, compiled.stderr
    output = dt_validate(processed_schema, dtb)
    assert "broken-buffer" in output, f"dt-validate accepted {case}:\n{source.read_text()}"
