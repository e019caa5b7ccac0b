"""Random sequences of allocate / view / write / flush / invalidate / free / pickle /
ufunc, with every invariant checked after every step.

The invariants: the ledger agrees with this process's pool and the pool tiles the
region; live blocks are disjoint; every live buffer still holds exactly what was
written to it (an overlap would show up as foreign data); the pool's used bytes are
those of the live allocations plus the freed ones a view still holds; each
flush/invalidate on a non-coherent cached buffer sent exactly one command covering
its span; anything done to a freed view raises BufferFreedError.

The number of sequences is PYNQ_ALLOC_STATEFUL_EXAMPLES (default 10,000: `make test`
runs them under numpy 2, and 1,000 under numpy 1.26).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pynq_alloc import Buffer, BufferFreedError, OutOfMemoryError, allocate
from pynq_alloc import ledger as ledger_module
from pynq_alloc.backends.sim import SimRegion, Simulator

EXAMPLES = int(os.environ.get("PYNQ_ALLOC_STATEFUL_EXAMPLES", "10000"))
REGIONS = [SimRegion("udmabuf0", 1 << 20, 0x7E001000),  # only 4 KiB-aligned, on purpose
           SimRegion("udmabuf1", 256 << 10, 0x8_0000_0000, coherent=True)]
_shared: Dict[str, Simulator] = {}


@pytest.fixture(autouse=True, scope="module")
def _often_compacted_ledger_and_one_simulator() -> Iterator[None]:
    """One simulator for all sequences (each sequence ends with an empty pool), its
    ledger compacted often, so that sequences cross compactions too (and the full
    replay in teardown() stays short); afterwards the threshold is put back for the
    test files that run next, and the simulator's files leave /dev/shm."""
    threshold = ledger_module._COMPACT_MIN_RECORDS
    ledger_module._COMPACT_MIN_RECORDS = 64
    try:
        with Simulator(REGIONS, record_syncs=True) as sim:
            _shared["sim"] = sim
            yield
    finally:
        ledger_module._COMPACT_MIN_RECORDS = threshold
        _shared.pop("sim", None)


class Allocation:
    def __init__(self, buf: Buffer) -> None:
        self.buf: Optional[Buffer] = buf
        self.model = np.array(buf, copy=True)
        self.region = buf.region.name
        self.nbytes = buf.nbytes
        self.freed = False


class BufferMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = _shared["sim"]
        self.backend = self.sim.backend()  # shares the process's one handle per region
        self.allocations: List[Allocation] = []
        self.views: List[Tuple[Buffer, Allocation, Any]] = []
        self.counter = 0

    # -- helpers ------------------------------------------------------------------
    def live(self) -> List[Allocation]:
        return [a for a in self.allocations if not a.freed]

    @staticmethod
    def pick(data: st.DataObject, choices: List[Any]) -> Any:
        """Draw an index, not the object: Hypothesis keeps what it draws, and a kept
        view would hold its block past the point where the model frees it."""
        return choices[data.draw(st.integers(0, len(choices) - 1))]

    def pick_array(self, data: st.DataObject) -> Tuple[Buffer, Allocation, Any]:
        choices: List[Tuple[Buffer, Allocation, Any]] = [
            (a.buf, a, slice(None)) for a in self.live() if a.buf is not None]
        choices += [v for v in self.views if not v[1].freed]
        return self.pick(data, choices)  # type: ignore[no-any-return]

    # -- rules --------------------------------------------------------------------------
    @rule(n=st.integers(1, 3000), dtype=st.sampled_from(["u1", "<u2", "<i4", "<f8"]),
          region=st.sampled_from(["udmabuf0", "udmabuf0", "udmabuf1"]),
          cacheable=st.booleans(), align=st.sampled_from([None, 64, 4096, 1 << 16]))
    def allocate(self, n: int, dtype: str, region: str, cacheable: bool,
                 align: Optional[int]) -> None:
        try:
            buf = allocate(n, dtype, target=region, cacheable=cacheable, align=align,
                           backend=self.backend)
        except OutOfMemoryError:
            return
        if align:
            assert buf.device_address % align == 0
        assert not buf.any(), "a fresh buffer holds an earlier buffer's data"
        self.counter += 1
        buf[...] = self.counter % 100
        self.allocations.append(Allocation(buf))

    @precondition(lambda self: any(a.buf is not None for a in self.live()))
    @rule(data=st.data())
    def view(self, data: st.DataObject) -> None:
        owner = self.pick(data, [a for a in self.live() if a.buf is not None])
        assert owner.buf is not None
        index = data.draw(st.slices(owner.buf.shape[0]))
        part = owner.buf[index]
        if part.size:
            self.views.append((part, owner, index))

    @precondition(lambda self: self.live())
    @rule(data=st.data(), value=st.integers(0, 99))
    def write(self, data: st.DataObject, value: int) -> None:
        array, owner, index = self.pick_array(data)
        array[...] = value
        owner.model[index] = value

    @precondition(lambda self: self.live())
    @rule(data=st.data(), to_device=st.booleans())
    def sync(self, data: st.DataObject, to_device: bool) -> None:
        array, _owner, _ = self.pick_array(data)
        self.sim.clear_sync_requests()
        array.flush() if to_device else array.invalidate()
        requests = self.sim.sync_requests()
        if array.coherent or not array.cacheable:
            assert requests == []
            return
        (request,) = requests
        base = array.region.phys_addr
        low = array.device_address - base
        high = low + array.nbytes  # 1-D views with positive or negative step
        if array.strides[0] < 0:
            low, high = low - (array.size - 1) * -array.strides[0], low + array.itemsize
        elif array.size > 1:
            high = low + (array.size - 1) * array.strides[0] + array.itemsize
        assert request.offset == low - low % 64 and request.valid
        assert request.offset + request.size >= high > request.offset + request.size - 64
        assert request.direction == (1 if to_device else 2)

    @precondition(lambda self: self.live())
    @rule(data=st.data(), through_view=st.booleans())
    def free(self, data: st.DataObject, through_view: bool) -> None:
        owner = self.pick(data, self.live())
        views = [v for v in self.views if v[1] is owner]
        if through_view and views:
            views[0][0].freebuffer()  # PYNQ's rule: a view's freebuffer() frees nothing
            assert owner.buf is not None and not owner.buf.freed and not views[0][0].freed
            return
        assert owner.buf is not None
        owner.buf.freebuffer()
        owner.freed = True
        if owner.buf is not None:
            assert owner.buf.freed
        owner.buf = None

    @precondition(lambda self: any(v[1].freed for v in self.views))
    @rule(data=st.data())
    def use_freed_view(self, data: st.DataObject) -> None:
        part = self.pick(data, [v for v in self.views if v[1].freed])[0]
        with pytest.raises(BufferFreedError):
            part.flush()
        with pytest.raises(BufferFreedError):
            part[0]

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def drop_view(self, data: st.DataObject) -> None:
        del self.views[data.draw(st.integers(0, len(self.views) - 1))]

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def pickle_roundtrip(self, data: st.DataObject) -> None:
        array, owner, index = self.pick_array(data)
        restored = pickle.loads(pickle.dumps(array))
        assert type(restored) is np.ndarray
        assert np.array_equal(restored, owner.model[index])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def ufunc(self, data: st.DataObject) -> None:
        array, owner, index = self.pick_array(data)
        result = array + 1
        assert type(result) is np.ndarray
        assert np.array_equal(result, owner.model[index] + 1)

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def contents_are_intact(self) -> None:
        for a in self.live():
            if a.buf is not None:
                assert np.array_equal(a.buf, a.model), "a live buffer's data changed"

    @invariant()
    def pool_is_consistent_and_exact(self) -> None:
        held = {id(v[1]) for v in self.views}
        for region in ("udmabuf0", "udmabuf1"):
            ledger = self.backend.handle(self.backend.region(region)).ledger
            ledger.check(against_file=False)  # the file replay is checked in teardown()
            blocks = ledger.live_blocks()
            assert all(a[0] + a[1] <= b[0] for a, b in zip(blocks, blocks[1:]))
            expected = sum(-(-a.nbytes // 64) * 64 for a in self.allocations
                           if a.region == region and (not a.freed or id(a) in held))
            assert sum(size for _, size, _ in blocks) == expected

    def teardown(self) -> None:
        for a in self.live():
            if a.buf is not None:
                a.buf.freebuffer()
        self.views.clear()
        self.allocations.clear()  # no reference cycles: CPython frees the blocks right here
        for region in ("udmabuf0", "udmabuf1"):
            ledger = self.backend.handle(self.backend.region(region)).ledger
            ledger.check()
            assert ledger.stats().used == 0, "a sequence leaked pool memory"


BufferMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=25,
                                           deadline=None)
# make test-python gives every host test 300 s (pytest-timeout: a hang fails instead of
# stalling CI); 10,000 sequences take about two minutes on 2 cores
test_random_sequences_keep_every_invariant = pytest.mark.timeout(1800)(BufferMachine.TestCase)
