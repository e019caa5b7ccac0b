"""The simulator backend (PYNQ_ALLOC_BACKEND=sim) on the target's own CPU and
numpy: it needs no driver, so these run on every board and in every QEMU boot."""
from __future__ import annotations

import platform

import numpy as np
import pynq_alloc
import pytest


def test_sim_runs_the_seed_example_on_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNQ_ALLOC_BACKEND", "sim")
    from pynq_alloc import allocate
    buf = allocate(shape=(5,), dtype='u4')
    buf[:] = range(5)
    buf.flush()
    first = pynq_alloc.regions(backend="sim")[0]
    assert first.phys_addr <= buf.device_address < first.phys_addr + first.size
    assert buf.tolist() == [0, 1, 2, 3, 4]
    print(f"{platform.machine()} numpy {np.__version__}: seed example at {buf.device_address:#x}")
    buf.freebuffer()


def test_sim_keeps_64_bit_device_addresses_above_4_gib() -> None:
    high = [r for r in pynq_alloc.regions(backend="sim") if r.phys_addr >= 1 << 32]
    if not high:
        pytest.skip("the simulator has no region above 4 GiB")
    with pynq_alloc.allocate((4, 1024), "u8", target=high[0].name, backend="sim") as buf:
        assert buf.device_address >= 1 << 32
        assert buf[3].device_address == buf.device_address + 3 * 1024 * 8
        assert buf[:, 5].device_address == buf.device_address + 5 * 8


def test_sim_views_have_addresses_and_new_results_do_not() -> None:
    with pynq_alloc.allocate(16, "u4", backend="sim") as buf:
        buf[:] = np.arange(16, dtype="u4")
        view = buf[2:]
        assert isinstance(view, pynq_alloc.Buffer)
        assert view.device_address == buf.device_address + 8
        assert view.view("u1")[1:].device_address == buf.device_address + 9
        result = buf + 1
        assert type(result) is np.ndarray
        assert np.array_equal(result, np.arange(1, 17))
        assert type(buf.copy()) is np.ndarray


def test_sim_float_and_structured_dtypes_on_this_cpu() -> None:
    with pynq_alloc.allocate((8, 8), "f8", backend="sim") as m:
        m[:] = np.eye(8) * 2
        m.flush()
        assert np.allclose(m @ m, np.eye(8) * 4)
    desc = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u4")])
    with pynq_alloc.allocate(4, desc, backend="sim") as d:
        d["addr"] = d.device_address
        d["len"] = 4096
        assert d[3]["len"] == 4096 and int(d[0]["addr"]) == d.device_address


def test_sim_freeing_with_live_views_never_faults() -> None:
    # The region stays mapped for the life of the process, so even a bug here
    # would show as wrong data, not as a fault that kills the suite.
    buf = pynq_alloc.allocate(1024, "u4", backend="sim")
    buf[:] = 7
    view = buf[10:20]
    buf.freebuffer()
    assert int(np.asarray(view).sum()) == 70  # still mapped, still reserved
    with pytest.raises(pynq_alloc.BufferFreedError):
        _ = view.device_address
    with pytest.raises(pynq_alloc.BufferFreedError):
        view[0]
    with pynq_alloc.allocate(1024, "u4", backend="sim") as again:
        again[:] = 9
        assert int(np.asarray(view).sum()) == 70, "a new buffer was given the memory a live view still uses"
    del view
