"""The udmabuf backend reads the driver's files strictly and explains what is wrong."""

from __future__ import annotations

import os

import pytest
from as_user import as_nobody
from pynq_alloc import (
    DevicePermissionError,
    DriverNotFoundError,
    allocate,
    regions,
)
from pynq_alloc.backends.sim import Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend


def test_regions_are_read_from_sysfs_in_driver_order(sim: Simulator) -> None:
    found = regions(sim.backend())
    assert [(r.name, r.size, r.phys_addr, r.coherent, r.driver_version, r.ioctl_version)
            for r in found] == [("udmabuf0", 16 << 20, 0x7E000000, False, "5.5.0", 2),
                                ("udmabuf1", 8 << 20, 0x8_0000_0000, True, "5.5.0", 2)]


@pytest.mark.parametrize("phys_text, phys", [
    ("0x0000000812345000\n", 0x812345000),  # %pad of a 64-bit dma_addr_t (arm64)
    ("0x7ad00000\n", 0x7AD00000),  # %pad of a 32-bit dma_addr_t (Zynq-7000)
    ("0x000000007AD00000\n", 0x7AD00000),  # upper-case digits
])
def test_the_parser_reads_the_driver_formats(sim: Simulator, phys_text: str, phys: int) -> None:
    """What the driver writes (u-dma-buf.c: phys_addr %pad, size %zu, sync_mode %d...),
    written into the files here, is what the backend reports."""
    sim.write_attr("udmabuf0", "phys_addr", phys_text)
    sim.write_attr("udmabuf0", "size", "1048577\n")  # not a page multiple: the driver allows it
    sim.write_attr("udmabuf0", "sync_mode", "3\n")
    sim.write_attr("udmabuf0", "dma_coherent", "1\n")
    sim.write_attr("udmabuf0", "ioctl_version", "1\n")
    os.remove(sim.attr_path("udmabuf0", "quirk_mmap_mode"))  # drivers before v4 have none
    region = sim.backend().region("udmabuf0")
    assert (region.phys_addr, region.size, region.sync_mode, region.coherent,
            region.ioctl_version, region.quirk_mmap_mode) == (phys, 1048577, 3, True, 1, 0)


def test_no_driver_is_a_clear_error_not_a_simulator(tmp_path: object) -> None:
    backend = UdmabufBackend(str(tmp_path) + "/none", str(tmp_path))
    with pytest.raises(DriverNotFoundError, match=r"not loaded.*device tree") as info:
        allocate(4, backend=backend)
    assert "PYNQ_ALLOC_BACKEND=sim" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_unreadable_device_gives_a_permission_error_that_names_the_group(sim: Simulator) -> None:
    """Run as a user the device's mode shuts out (a child that drops root when the
    suite runs as root, as CI does: root ignores file modes)."""
    os.chmod(sim.device_path("udmabuf0"), 0)
    for directory in (sim.root, sim.dev_root, os.path.dirname(sim.sysfs_root),
                      os.path.dirname(os.path.dirname(sim.sysfs_root))):
        os.chmod(directory, 0o755)
    def work() -> str:
        allocate(4, backend=sim.backend())
        return "allocated"
    said = as_nobody(work)
    assert said.startswith("DevicePermissionError") and "group 'dma'" in said, said


def test_permission_errors_map_to_our_hierarchy() -> None:
    from pynq_alloc.errors import device_error
    err = device_error(PermissionError(13, "Permission denied"), "cannot open", "/dev/udmabuf0")
    assert isinstance(err, DevicePermissionError) and isinstance(err, PermissionError)
    assert "usermod -aG dma" in str(err) and err.errno == 13


def test_regions_report_usage_of_every_process(sim: Simulator) -> None:
    backend = sim.backend()
    keep = allocate(5000, "u1", backend=backend)
    region = regions(backend)[0]
    assert (region.used, region.buffers) == (5056, 1)  # whole 64-byte lines
    assert region.free == region.size - 5056 and region.largest_free <= region.free
    assert allocate(4, target=region, backend=backend).region.name == "udmabuf0"
    del keep


def test_ledger_is_group_shared_whatever_the_umask(sim: Simulator) -> None:
    old = os.umask(0o022)
    try:
        allocate(4, backend=sim.backend())
    finally:
        os.umask(old)
    assert os.stat(os.path.join(sim.run_dir, "udmabuf0.ledger")).st_mode & 0o777 == 0o660


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the device another group")
def test_ledger_takes_the_device_group_in_a_run_dir_without_setgid(sim: Simulator) -> None:
    """A run directory made by hand (no setgid bit, root's group): the ledger file the
    library creates in it is still given the device file's group, and stays ours."""
    group = 4243
    os.chown(sim.device_path("udmabuf0"), 0, group, follow_symlinks=False)
    os.makedirs(sim.run_dir, mode=0o755)
    os.chown(sim.run_dir, 0, 0)
    allocate(4, backend=sim.backend())
    st = os.stat(os.path.join(sim.run_dir, "udmabuf0.ledger"))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, group, 0o660)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the device another group")
def test_a_run_dir_the_library_creates_is_shared_by_the_device_group(sim: Simulator) -> None:
    group = 4244
    os.chown(sim.device_path("udmabuf0"), 0, group, follow_symlinks=False)
    assert not os.path.exists(sim.run_dir)
    allocate(4, backend=sim.backend())
    st = os.stat(sim.run_dir)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, group, 0o2770)
