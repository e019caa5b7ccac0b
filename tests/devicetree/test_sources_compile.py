"""Every device-tree source compiles with the real dtc, and dtc has nothing to say."""

from __future__ import annotations

import re

import dttools
import pytest
from conftest import BOARD_STUBS, GENERIC_CONFIGS

FULL_TREES = [stub.stem for stub in BOARD_STUBS] + list(GENERIC_CONFIGS)


@pytest.mark.parametrize("name", FULL_TREES)
def test_source_compiles_without_dtc_warnings(compiled_sources, name):
    dtb, warnings = compiled_sources[name]
    assert dtb.stat().st_size > 0
    assert warnings == "", f"dtc warned on {name}:\n{warnings}"


def test_overlay_compiles_without_dtc_warnings(workdir):
    _, warnings = dttools.compile_dts(
        dttools.OVERLAY, workdir / "overlay", dtc_flags=dttools.OVERLAY_DTC_FLAGS
    )
    assert warnings == "", f"dtc warned on {dttools.OVERLAY.name}:\n{warnings}"


def test_every_source_file_is_compiled_by_some_check(workdir, compiled_sources):
    """No .dtsi/.dtso under device-tree/ escapes the compile checks above."""
    sources = (
        [stub for stub in BOARD_STUBS]
        + [workdir / f"{name}.dts" for name in GENERIC_CONFIGS]
        + [dttools.OVERLAY]
    )
    reached = set()
    for source in sources:
        result = dttools.run(
            [
                "cpp",
                "-nostdinc",
                "-undef",
                "-D__DTS__",
                "-x",
                "assembler-with-cpp",
                *[f"-I{d}" for d in dttools.INCLUDE_DIRS],
                "-M",
                "-MT",
                "x",
                source,
            ]
        )
        assert result.returncode == 0, result.stderr
        reached |= {p for p in re.split(r"[\s\\]+", result.stdout.partition(":")[2]) if p}
    reached = {str(dttools.Path(p).resolve()) for p in reached}
    ours = [p for p in dttools.DEVICE_TREE.rglob("*") if p.suffix in {".dts", ".dtsi", ".dtso"}]
    missed = [str(p.relative_to(dttools.REPO)) for p in ours if str(p.resolve()) not in reached]
    assert ours and not missed, f"not compiled by any check: {missed}"


def test_final_qemu_tree_adds_no_dtc_warnings_to_qemus_own(virt_dtb, fresh_qemu_dtb):
    """dtc warns about QEMU's own nodes (raw phandles); none may come from ours."""
    ours = set(dttools.dtc_warnings_of_dtb(virt_dtb)) - set(
        dttools.dtc_warnings_of_dtb(fresh_qemu_dtb)
    )
    assert not ours, "dtc warnings caused by the overlay:\n" + "\n".join(sorted(ours))
