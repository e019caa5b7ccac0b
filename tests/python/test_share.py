"""Sharing a buffer with other processes of ours: the same memory, no copy, and a block that
goes back to the pool only when every holder has let go or died."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue as queue_module
import random
import signal
import time
from collections.abc import Iterator
from typing import Any, List, Tuple

import numpy as np
import pytest
from churn import churn_until
from pynq_alloc import BufferFreedError, allocate
from pynq_alloc.backends.sim import SimRegion, Simulator
from pynq_alloc.backends.udmabuf import UdmabufBackend

REGION = SimRegion("udmabuf0", 8 << 20, 0x7E000000)
SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator([REGION]) as simulator:
        yield simulator


def ledger(backend: UdmabufBackend) -> Any:
    return backend.handle(backend.region()).ledger


def answer(queue: Any, child: Any, timeout: float = 120.0) -> Any:
    """The next item ``child`` puts on ``queue``. Fails at once, naming the exit code,
    when the child dies first (one that cannot take over a shared buffer raises while
    unpickling its arguments and never answers), rather than after the whole timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.1)
        except queue_module.Empty:
            if not child.is_alive():
                try:  # what it put just before exiting is still on its way
                    return queue.get(timeout=5)
                except queue_module.Empty:
                    pytest.fail(f"the child exited with status {child.exitcode} without "
                                f"answering (its traceback is above)")
    pytest.fail(f"the child did not answer within {timeout} s")


# -- workers (module level: spawn pickles them by name) -------------------------------------
def _write_and_report(buf: Any, value: int, out: Any) -> None:
    # The ShareHandle passed as a Process argument was pickled: it arrives as a Buffer.
    buf[...] = value
    out.put((buf.device_address, buf.shape, str(buf.dtype), type(buf).__name__))


def _hold_until_killed(handle: Any, ready: Any) -> None:
    buf = handle  # a handle passed as a Process argument arrives as the Buffer itself
    ready.put(buf.device_address)
    time.sleep(600)


def _hold_check_free(queue: Any, results: Any) -> None:
    """Receive shared buffers, keep a few, check none was overwritten, free them."""
    rng = random.Random(os.getpid())
    held: List[Tuple[Any, int]] = []
    while True:
        item = queue.get()
        if item is None:
            break
        buf, mark = item
        held.append((buf, mark))
        if len(held) > 3 or rng.random() < 0.5:
            old, old_mark = held.pop(rng.randrange(len(held)))
            results.put(bool((old == old_mark).all()))
            old.freebuffer()
    for buf, mark in held:
        results.put(bool((buf == mark).all()))


# -- the rules --------------------------------------------------------------------------------
def test_a_shared_buffer_is_the_same_memory_in_another_process(sim: Simulator) -> None:
    backend = sim.backend()
    buf = allocate((64, 48), "u2", backend=backend)
    view = buf[8:16, ::2]
    out = SPAWN.Queue()
    child = SPAWN.Process(target=_write_and_report, args=(view.share(), 777, out))
    child.start()
    address, shape, dtype, kind = answer(out, child)
    child.join(timeout=120)
    assert child.exitcode == 0
    assert (address, shape, dtype, kind) == (view.device_address, (8, 24), "uint16", "Buffer")
    assert (view == 777).all() and (buf[:8] == 0).all()  # written there, not in a copy
    assert ledger(backend).stats().blocks == 1


def test_the_block_stays_until_every_holder_lets_go(sim: Simulator) -> None:
    backend = sim.backend()
    buf = allocate(4096, "u1", backend=backend)
    address = buf.device_address
    other = buf.share().open()  # a second hold (here: this process; below: others)
    assert ledger(backend).holders(0) == {ledger(backend).slot: 2}
    buf.freebuffer()
    fresh = allocate(4096, "u1", backend=backend)
    assert fresh.device_address != address, "a held block was handed out again"
    other[:] = 5
    assert not fresh.any()
    other.freebuffer()
    fresh.freebuffer()
    assert ledger(backend).stats().used == 0


@pytest.mark.parametrize("killed", ["receiver", "sender"])
def test_sigkill_of_a_holder_drops_only_its_hold(sim: Simulator, killed: str) -> None:
    backend = sim.backend()
    buf = allocate(1 << 16, "u1", backend=backend)
    buf[:] = 0x33
    ready = SPAWN.Queue()
    child = SPAWN.Process(target=_hold_until_killed, args=(buf.share(), ready))
    child.start()
    assert answer(ready, child) == buf.device_address
    if killed == "sender":  # this process lets go, the child keeps the block alive
        buf.freebuffer()
        assert ledger(backend).stats().used == 1 << 16
        assert allocate(1 << 16, "u1", backend=backend).device_address != REGION.phys_addr
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join()
    if killed == "receiver":
        assert ledger(backend).stats().used == 1 << 16  # ours still: the child's hold went
        assert (buf == 0x33).all()
        buf.freebuffer()
    assert ledger(backend).stats().used == 0  # the dead slot's hold is reclaimed
    ledger(backend).check()


@pytest.mark.parametrize("before", [0, 1, 3], ids=["at offset 0", "after 1", "after 3"])
def test_pickled_bytes_keep_the_block_until_received(sim: Simulator, before: int) -> None:
    """queue.put(buf.share()); buf.freebuffer() is safe: pickling took a hold that the
    receiver takes over. Also for a block that is not the region's first (``before``
    buffers kept ahead of it): the receipt must match the transfer by its block."""
    backend = sim.backend()
    ahead = [allocate(4096, "u1", backend=backend) for _ in range(before)]
    buf = allocate(4096, "u1", backend=backend)
    offset = buf.device_address - REGION.phys_addr
    assert offset == 4096 * before
    buf[:] = 9
    sent = pickle.dumps(buf.share())  # the handle itself is dropped: only bytes travel
    buf.freebuffer()
    book = ledger(backend)
    assert book.stats().used == 4096 * (before + 1) and book.in_flight() == 1
    received = pickle.loads(sent)
    assert (received == 9).all() and book.in_flight() == 0
    assert book.holders(offset) == {book.slot: 1}  # handed over, not added
    received.freebuffer()
    assert book.stats().used == 4096 * before and len(ahead) == before


def test_bytes_unpickled_after_every_holder_let_go_are_refused(sim: Simulator) -> None:
    backend = sim.backend()
    buf = allocate(4096, "u1", backend=backend)
    sent = pickle.dumps(buf.share())
    first = pickle.loads(sent)
    buf.freebuffer()
    first.freebuffer()
    again = allocate(4096, "u1", backend=backend)  # same offset, another block
    assert again.device_address == REGION.phys_addr
    with pytest.raises(BufferFreedError, match="keep the sender's buffer"):
        pickle.loads(sent)
    assert ledger(backend).holders(0) == {ledger(backend).slot: 1}


def _pickle_and_exit(handle_bytes_out: Any, region_paths: Any) -> None:
    from pynq_alloc.backends.udmabuf import UdmabufBackend as Backend
    buf = allocate(4096, "u1", backend=Backend(*region_paths))
    handle_bytes_out.put(pickle.dumps(buf.share()))


def test_a_transfer_nobody_receives_ends_with_its_sender(sim: Simulator) -> None:
    backend = sim.backend()
    out = SPAWN.Queue()
    child = SPAWN.Process(target=_pickle_and_exit,
                          args=(out, (sim.sysfs_root, sim.dev_root, sim.run_dir)))
    child.start()
    sent = answer(out, child)
    child.join(timeout=120)
    assert child.exitcode == 0
    assert ledger(backend).stats().used == 0  # the dead sender's in-flight hold went too
    assert ledger(backend).in_flight() == 0  # and its transfer with it
    with pytest.raises(BufferFreedError):
        pickle.loads(sent)


def test_a_live_handle_keeps_the_senders_block(sim: Simulator) -> None:
    backend = sim.backend()
    handle = allocate(4096, "u1", backend=backend).share()  # the buffer itself is dropped
    assert ledger(backend).stats().used == 4096
    received = pickle.loads(pickle.dumps(handle))
    del handle
    assert ledger(backend).stats().used == 4096  # the receiver's hold
    del received
    assert ledger(backend).stats().used == 0


def test_plain_pickling_still_copies(sim: Simulator) -> None:
    buf = allocate(16, "u4", backend=sim.backend())
    buf[:] = 3
    copy = pickle.loads(pickle.dumps(buf))
    assert type(copy) is np.ndarray
    copy[:] = 4
    assert (buf == 3).all()


def test_compaction_keeps_every_hold(sim: Simulator) -> None:
    backend = sim.backend()
    kept = allocate(4096, "u1", backend=backend)
    second = kept.share().open()
    for _ in range(3000):  # enough records to trigger compaction (4096 and 4x live)
        allocate(64, "u1", backend=backend).freebuffer()
    book = ledger(backend)
    assert book._epoch > 0, "the ledger was never compacted"
    book.check()  # a fresh replay of the file has the same holders and tags
    assert book.holders(0) == {book.slot: 2}
    del kept, second
    assert book.stats().used == 0


def test_compaction_keeps_other_processes_holds_and_pending_transfers(sim: Simulator) -> None:
    """The snapshot a compaction writes has, besides a record per live block, one per
    other process holding it and one per pickled handle nobody has received yet: a
    process replaying the file afterwards (check()) sees the same holders and transfer,
    and the pending handle can still be received."""
    backend = sim.backend()
    buf = allocate(4096, "u1", backend=backend)
    buf[:] = 0x5A
    ready = SPAWN.Queue()
    child = SPAWN.Process(target=_hold_until_killed, args=(buf.share(), ready))
    child.start()
    try:
        assert answer(ready, child) == buf.device_address
        sent = pickle.dumps(buf.share())  # pending: its hold is ours until received
        book = ledger(backend)
        epoch = book._epoch
        churn_until(backend, lambda: book._epoch != epoch)
        book.check()  # a fresh replay of the snapshot agrees with this process's mirror
        holders = book.holders(0)
        assert len(holders) == 2 and holders[book.slot] == 2, holders
        assert book.in_flight() == 1
        received = pickle.loads(sent)
        assert (received == 0x5A).all() and book.in_flight() == 0
        assert book.holders(0)[book.slot] == 2  # the transfer's hold passed to `received`
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()


def test_many_processes_sharing_with_kills_never_lose_a_held_block(sim: Simulator) -> None:
    """The parent shares marked buffers with four workers and frees its own buffer at
    once (before the queue's thread has even pickled the handle); workers free at
    random and two are killed midway. Every buffer a worker still held read back its
    mark (a block handed out again would have been zeroed), and what is left in the
    pool is exactly the handles the killed workers never read."""
    backend = sim.backend()
    queues = [SPAWN.Queue() for _ in range(4)]
    results = SPAWN.Queue()
    workers = [SPAWN.Process(target=_hold_check_free, args=(q, results)) for q in queues]
    for worker in workers:
        worker.start()
    rng = random.Random(1)
    for step in range(400):
        mark = 1 + step % 250
        buf = allocate(rng.randrange(1, 20000), "u1", backend=backend)
        buf[:] = mark
        queues[rng.randrange(4)].put((buf.share(), mark))
        if step == 200:
            time.sleep(0.5)  # let the queues drain a little, then kill two holders
            for worker in workers[:2]:
                os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        buf.freebuffer()  # at once: the pickled handle holds the block for the receiver
    for queue in queues[2:]:
        queue.put(None)
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers[2:]] == [0, 0]
    checked = []
    while not results.empty():
        checked.append(results.get())
    assert len(checked) > 50 and all(checked), "a held block was overwritten"
    for queue in queues[:2]:  # what the killed workers never read
        queue.cancel_join_thread()
    # Handles sent to the killed workers but never read are held by us (the sender)
    # until we exit; everything else is back.
    book = ledger(backend)
    assert book.stats().used == sum(size for _, size, _ in book.live_blocks())
    assert book.stats().blocks == book.in_flight()
    book.check()
