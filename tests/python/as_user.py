"""Run a piece of a test in a forked child, as this user or as nobody."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from pynq_alloc import PynqAllocError

NOBODY = 65534


def as_nobody(work: Callable[[], str], groups: Sequence[int] = ()) -> str:
    """``work()`` in a forked child that, when the tests run as root (as in CI), drops
    to uid and gid nobody with these supplementary groups; otherwise it runs as the
    user it is. Returns what ``work`` returned, or "<ErrorType>: <message>" of the
    PynqAllocError it raised; any other failure of the child fails the test."""
    return in_forked_child(work, drop_root=True, groups=groups)


def in_forked_child(work: Callable[[], str], drop_root: bool = False,
                    groups: Sequence[int] = (), catch: type = PynqAllocError) -> str:
    """``work()`` in a forked child (as nobody when ``drop_root`` and root); what it
    returned, or "<ErrorType>: <message>" of the ``catch`` exception it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(read)
            if drop_root and os.geteuid() == 0:
                os.setgroups(list(groups))
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                said = work()
            except catch as exc:
                said = f"{type(exc).__name__}: {exc}"
            os.write(write, said.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    assert status == 0, f"the forked child failed (status {status:#x}): {said}"
    return said
