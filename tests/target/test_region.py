"""Regions and addresses: what the package reports is the memory the device
tree reserved, and what `pynq-alloc info`/`selftest` say on the board."""
from __future__ import annotations

import json
import mmap
import shutil
import subprocess
import sys
from typing import Any, List

import numpy as np
import pynq_alloc
import pytest
from helpers import reserved_pool, sysfs, udmabuf_node


def pool_of(region: Any):
    node = udmabuf_node(region.name)
    if node is None:
        pytest.skip(f"no ikwzm,u-dma-buf node named {region.name} in /proc/device-tree "
                    f"(made by the udmabufN= module parameter?)")
    pool = reserved_pool(region.name)
    if pool is None:
        pytest.skip(f"{node} has no memory-region: the driver took its memory from the "
                    f"default CMA pool, which the device tree does not place")
    return pool


def pynq_alloc_cli() -> List[str]:
    exe = shutil.which("pynq-alloc")
    return [exe] if exe else [sys.executable, "-m", "pynq_alloc"]


def test_region_lies_inside_its_reserved_memory_node(region: Any) -> None:
    pool = pool_of(region)
    assert pool.base <= region.phys_addr and region.phys_addr + region.size <= pool.end, (
        f"{region.name}: {region.phys_addr:#x}+{region.size:#x} is not inside "
        f"{pool.path} = {pool.base:#x}+{pool.size:#x}")
    if pool.no_map:  # a no-map carve-out is handed over whole, from its base
        assert region.phys_addr == pool.base


def test_region_reports_what_the_driver_says(region: Any) -> None:
    assert region.phys_addr == int(sysfs(region.name, "phys_addr"), 16)
    assert region.size == int(sysfs(region.name, "size"))
    assert region.driver_version == sysfs(region.name, "driver_version")
    assert region.coherent == (sysfs(region.name, "dma_coherent") == "1")


def test_allocate_returns_addresses_inside_the_reserved_region(region: Any) -> None:
    pool = pool_of(region)
    with pynq_alloc.allocate(shape=(3, 1000), dtype="u4", target=region.name) as buf:
        assert isinstance(buf, pynq_alloc.Buffer)
        assert pool.base <= buf.device_address
        assert buf.device_address + buf.nbytes <= pool.end
        assert buf.physical_address == buf.device_address
        assert buf.region.name == region.name
        row = buf[1]
        assert row.device_address == buf.device_address + 4000


def test_allocate_honours_align_in_physical_addresses(region: Any) -> None:
    # all alive at once: the second default-aligned block cannot sit at the region's start
    with pynq_alloc.allocate(100, "u1", target=region.name) as first, \
            pynq_alloc.allocate(100, "u1", target=region.name) as second, \
            pynq_alloc.allocate(100, "u1", target=region.name, align=1 << 16) as third:
        assert first.device_address != second.device_address
        page = mmap.PAGESIZE
        assert [first.device_address % page, second.device_address % page] == [0, 0]  # default
        assert third.device_address % (1 << 16) == 0


def test_freed_blocks_go_back_to_the_region(region: Any) -> None:
    # Two buffers of more than half the region fit one after the other only if
    # the first one's block was given back.
    half = region.size // 2 + 4096
    for _ in range(2):
        with pynq_alloc.allocate(half, "u1", target=region.name) as buf:
            buf[:4] = 1


def test_allocating_more_than_the_region_raises_out_of_memory(region: Any) -> None:
    with pytest.raises(pynq_alloc.OutOfMemoryError) as err:
        pynq_alloc.allocate(region.size + 4096, "u1", target=region.name)
    assert isinstance(err.value, MemoryError)
    assert region.name in str(err.value)


def test_info_json_reports_every_region(all_regions: List[Any]) -> None:
    out = subprocess.run([*pynq_alloc_cli(), "info", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["backend"] == "udmabuf"
    by_name = {r["name"]: r for r in report["regions"]}
    for region in all_regions:
        r = by_name[region.name]
        phys = r["phys_addr"]
        assert (int(phys, 0) if isinstance(phys, str) else phys) == region.phys_addr
        assert r["size"] == region.size
        assert r["driver_version"] == sysfs(region.name, "driver_version")
        assert r["coherent"] == region.coherent
        assert r["sync_mode"] == int(sysfs(region.name, "sync_mode"))
        assert r["used"] + r["free"] == region.size
        assert 0 <= r["largest_free"] <= r["free"]


def test_selftest_passes_on_every_region(all_regions: List[Any]) -> None:
    out = subprocess.run([*pynq_alloc_cli(), "selftest", "--json"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"selftest failed:\n{out.stdout}\n{out.stderr}"
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert {r["region"] for r in report["regions"]} == {r.name for r in all_regions}


def test_seed_example_runs_on_the_first_region(all_regions: List[Any]) -> None:
    from pynq_alloc import allocate
    buf = allocate(shape=(5,), dtype='u4')
    buf[:] = range(5)
    buf.flush()
    first = all_regions[0]
    assert first.phys_addr <= buf.device_address < first.phys_addr + first.size
    assert np.array_equal(buf, np.arange(5, dtype="u4"))
    buf.freebuffer()


def test_regions_report_their_usage(region: Any) -> None:
    """CONTRACT: a region from regions() carries used, free and largest_free."""
    before = region.used
    assert region.used + region.free == region.size
    assert 0 <= region.largest_free <= region.free
    with pynq_alloc.allocate(1 << 20, "u1", target=region.name):
        now = {r.name: r for r in pynq_alloc.regions(backend="udmabuf")}[region.name]
        assert now.used >= before + (1 << 20)


def test_freeing_a_buffer_keeps_the_memory_of_its_live_views(region: Any) -> None:
    buf = pynq_alloc.allocate(1 << 16, "u1", target=region.name)
    buf[:] = 0x77
    view = buf[100:200]
    low = view.__array_interface__["data"][0]
    buf.freebuffer()
    with pynq_alloc.allocate(1 << 16, "u1", target=region.name) as other:
        other[:] = 0x11
        start = other.__array_interface__["data"][0]
        assert not start <= low < start + other.nbytes, "a live view's memory was handed out again"
        assert bool((view.view(np.ndarray) == 0x77).all())
    with pytest.raises(pynq_alloc.BufferFreedError):
        view.flush()
    del view
