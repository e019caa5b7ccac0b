"""The udmabuf backend reads the driver's files strictly and explains what is wrong."""

from __future__ import annotations

import os

import pytest
from pynq_alloc import (
    DevicePermissionError,
    DriverNotFoundError,
    allocate,
    regions,
)
from pynq_alloc.backends.sim import SimRegion, Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend


def test_regions_are_read_from_sysfs_in_driver_order(sim: Simulator) -> None:
    found = regions(sim.backend())
    assert [(r.name, r.size, r.phys_addr, r.coherent, r.driver_version, r.ioctl_version)
            for r in found] == [("udmabuf0", 16 << 20, 0x7E000000, False, "5.5.0", 2),
                                ("udmabuf1", 8 << 20, 0x8_0000_0000, True, "5.5.0", 2)]


def test_sysfs_values_have_the_driver_formats(sim: Simulator) -> None:
    with open(sim.attr_path("udmabuf1", "phys_addr")) as f:
        assert f.read() == "0x0000000800000000\n"


def test_no_driver_is_a_clear_error_not_a_simulator(tmp_path: object) -> None:
    backend = UdmabufBackend(str(tmp_path) + "/none", str(tmp_path))
    with pytest.raises(DriverNotFoundError, match=r"not loaded.*device tree") as info:
        allocate(4, backend=backend)
    assert "PYNQ_ALLOC_BACKEND=sim" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_unreadable_device_gives_a_permission_error_that_names_the_group(sim: Simulator) -> None:
    os.chmod(sim.device_path("udmabuf0"), 0)
    with pytest.raises(DevicePermissionError, match="group 'dma'"):
        allocate(4, backend=sim.backend())


def test_permission_errors_map_to_our_hierarchy() -> None:
    from pynq_alloc.errors import device_error
    err = device_error(PermissionError(13, "Permission denied"), "cannot open", "/dev/udmabuf0")
    assert isinstance(err, DevicePermissionError) and isinstance(err, PermissionError)
    assert "usermod -aG dma" in str(err) and err.errno == 13


def test_old_driver_without_ioctls_syncs_through_sysfs() -> None:
    with Simulator([SimRegion(driver_version="4.2.0", ioctl_version=0)],
                   record_syncs=True) as sim:
        buf = allocate(16, backend=sim.backend(), cacheable=True)
        sim.clear_sync_requests()
        buf.flush()
        assert [r.attr for r in sim.sync_requests()] == ["sync_for_device"]


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
