"""On-target suite: the same files run by ptest on a board and by tests/qemu/ in
QEMU. Regions are found through the package (pynq_alloc.regions()), never
through paths only the QEMU harness knows.

Tests that need the u-dma-buf driver take the `region` fixture: one run per
region the driver exposes, or one skip saying why there is none."""
from __future__ import annotations

import os
from typing import Any, List

import pytest

NO_DRIVER = ("no u-dma-buf region: the u-dma-buf module is not loaded or the device tree "
             "has no ikwzm,u-dma-buf node (in QEMU: UDMABUF_SRC=<u-dma-buf git checkout or "
             "mirror> make run builds the driver once)")


def driver_regions() -> List[Any]:
    """The regions of the real driver, [] when there is none."""
    import pynq_alloc
    try:
        return list(pynq_alloc.regions(backend="udmabuf"))
    except pynq_alloc.DriverNotFoundError:
        return []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "region" in metafunc.fixturenames:
        found = driver_regions()
        if found:
            metafunc.parametrize("region", found, ids=[r.name for r in found])
        else:
            metafunc.parametrize("region", [pytest.param(None, marks=pytest.mark.skip(
                reason=NO_DRIVER))], ids=["no-driver"])


@pytest.fixture
def all_regions() -> List[Any]:
    found = driver_regions()
    if not found:
        pytest.skip(NO_DRIVER)
    return found


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test starts processes as other users")
