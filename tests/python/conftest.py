"""Host tests: the udmabuf backend itself, pointed at the simulator's copy of the driver's files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from pynq_alloc.backends.sim import SimRegion, Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend

# `make mutate` runs with --hypothesis-profile=mutate: the same examples on every run and
# no example database (a failure saved while one mutant ran would be replayed against
# the next), so that a mutant's verdict does not depend on what ran before it.
settings.register_profile("mutate", database=None, derandomize=True)

NONCOHERENT = SimRegion("udmabuf0", 16 << 20, 0x7E000000)
COHERENT = SimRegion("udmabuf1", 8 << 20, 0x8_0000_0000, coherent=True)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator([NONCOHERENT, COHERENT], record_syncs=True) as simulator:
        yield simulator


@pytest.fixture
def backend(sim: Simulator) -> Iterator[UdmabufBackend]:
    yield sim.backend()


@pytest.fixture(autouse=True)
def _no_environment_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYNQ_ALLOC_BACKEND", "PYNQ_ALLOC_SIM_DIR", "PYNQ_ALLOC_SYSFS_ROOT",
                 "PYNQ_ALLOC_DEV_ROOT", "PYNQ_ALLOC_RUN_DIR"):
        monkeypatch.delenv(name, raising=False)
