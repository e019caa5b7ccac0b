"""Eight processes allocate and free at random from one region for a bounded time; three
are killed with SIGKILL midway. Afterwards: no two blocks that were live at the same
time overlapped, every process found its own data intact in every buffer it freed, and
the pool ends empty once the next allocation has reclaimed the dead processes' blocks.

Each worker logs ``<t_alloc> <address> <size>`` after allocate() returns and
``<t_free> <address>`` before it frees, using CLOCK_MONOTONIC (one clock for the whole
machine), so each logged lifetime lies inside the real one: an overlap in the log is
a real overlap. The killed workers' blocks count as live until the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Tuple

from pynq_alloc import allocate
from pynq_alloc.backends.sim import SimRegion, Simulator

WORKERS, KILLED, SECONDS = 8, 3, 4.0

WORKER = textwrap.dedent("""
    import random, sys, time
    import numpy as np
    from pynq_alloc import allocate, OutOfMemoryError
    from pynq_alloc.backends.udmabuf import UdmabufBackend
    backend = UdmabufBackend(*sys.argv[1:4])
    seed, seconds = int(sys.argv[4]), float(sys.argv[5])
    rng = random.Random(seed)
    log = open(sys.argv[6], "w", buffering=1)
    print("READY", file=log)
    until = time.monotonic() + seconds  # from now: a loaded machine may start us late
    held = []
    while time.monotonic() < until:
        if held and (len(held) > 12 or rng.random() < 0.45):
            buf, tag = held.pop(rng.randrange(len(held)))
            if not np.all(buf == tag):
                print("CORRUPT", hex(buf.device_address), file=log)
                sys.exit(1)
            print(time.monotonic(), buf.device_address, "F", file=log)
            buf.freebuffer()
        else:
            try:
                buf = allocate(rng.randrange(1, 40000), "u1", backend=backend,
                               align=rng.choice([None, 64, 65536]))
            except OutOfMemoryError:
                continue
            tag = (seed * 7 + len(held)) % 251 + 1
            buf[:] = tag
            print(time.monotonic(), buf.device_address, buf.nbytes, file=log)
            held.append((buf, tag))
    for buf, tag in held:
        if not np.all(buf == tag):
            print("CORRUPT", hex(buf.device_address), file=log)
            sys.exit(1)
        print(time.monotonic(), buf.device_address, "F", file=log)
        buf.freebuffer()
    print("DONE", file=log)
""")


def read_log(path: str, killed_at: float) -> List[Tuple[int, int, float, float]]:
    """(address, size, start, end) of every block the worker logged."""
    blocks: Dict[int, Tuple[int, float]] = {}
    lifetimes = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not line.endswith("\n") or parts[0] in ("DONE", "READY"):
                continue
            assert parts[0] != "CORRUPT", f"{path}: a buffer's data was overwritten: {line}"
            if parts[2] == "F":
                size, start = blocks.pop(int(parts[1]))
                lifetimes.append((int(parts[1]), size, start, float(parts[0])))
            else:
                blocks[int(parts[1])] = (int(parts[2]), float(parts[0]))
    lifetimes += [(addr, size, start, killed_at) for addr, (size, start) in blocks.items()]
    return lifetimes


def first_line_is(path: str, text: str) -> bool:
    try:
        with open(path) as f:
            return f.readline() == text
    except FileNotFoundError:
        return False


def wait_until_ready(logs: List[str], workers: List[subprocess.Popen]) -> None:
    """Every worker has started (imports done, log open): on a loaded machine that can
    take longer than the run itself, and a kill before it would test nothing."""
    deadline = time.monotonic() + 120
    for log, worker in zip(logs, workers):
        while not first_line_is(log, "READY\n"):
            assert worker.poll() is None, f"worker {log} exited before it started"
            assert time.monotonic() < deadline, f"worker {log} did not start in 120 s"
            time.sleep(0.02)


def test_eight_processes_with_kills_never_overlap_and_leak_nothing(tmp_path: object) -> None:
    with Simulator([SimRegion("udmabuf0", 8 << 20, 0x7E000000)]) as sim:
        logs = [os.path.join(str(tmp_path), f"worker{i}.log") for i in range(WORKERS)]
        workers = [subprocess.Popen([sys.executable, "-c", WORKER, sim.sysfs_root, sim.dev_root,
                                     sim.run_dir, str(i), str(SECONDS), logs[i]])
                   for i in range(WORKERS)]
        wait_until_ready(logs, workers)
        time.sleep(SECONDS / 2)
        kill_times = {}
        for worker in workers[:KILLED]:
            # The time the signal is sent: the worker dies after it, and only then can its
            # blocks be reclaimed, so [start, kill time] lies inside each block's lifetime.
            kill_times[worker.pid] = time.monotonic()
            os.kill(worker.pid, signal.SIGKILL)
        for worker in workers[:KILLED]:
            worker.wait()
        for worker in workers[KILLED:]:
            assert worker.wait(timeout=60) == 0, "a surviving worker failed (see its log)"

        lifetimes = []
        for i, worker in enumerate(workers):
            lifetimes += read_log(logs[i], kill_times.get(worker.pid, float("inf")))
        assert len(lifetimes) > 200, "too few allocations to mean anything"
        lifetimes.sort()
        for i, (addr, size, start, end) in enumerate(lifetimes):
            for other, other_size, other_start, other_end in lifetimes[i + 1:]:
                if other >= addr + size:
                    break
                assert end <= other_start or other_end <= start, (
                    f"blocks {addr:#x}+{size} and {other:#x}+{other_size} were live at once")

        held_at_kill = sum(1 for *_, end in lifetimes if end in kill_times.values())
        assert held_at_kill >= KILLED, "the killed workers should have died holding blocks"
        # The survivors' own allocations reclaimed the dead workers' blocks while they
        # ran; whatever is left goes with the next allocation by anyone.
        backend = sim.backend()
        allocate(64, backend=backend).freebuffer()
        ledger = backend.handle(backend.region()).ledger
        ledger.check()
        assert ledger.stats().used == 0
        print(f"{len(lifetimes)} blocks by {WORKERS} processes, {KILLED} killed holding "
              f"{held_at_kill} blocks, all reclaimed")
