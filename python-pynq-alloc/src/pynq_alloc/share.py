"""Handing a buffer to another process of ours without a copy.

``buf.share()`` makes a :class:`ShareHandle`: a small picklable description of
the buffer's memory (backend paths, region, block offset, size and tag, the
array's shape, dtype, strides and caching). Unpickled in another process (a
``multiprocessing`` queue or pool argument, ``socket.send``...), it becomes a
:class:`~pynq_alloc.Buffer` over the *same* physical memory: the receiver maps
the region itself and takes a hold on the block in the region's ledger. The
block returns to the pool only when every process that holds it has let go (or
died: holds belong to the ledger slot of the process, which the kernel's lock
release reclaims).

Pickling a handle takes a hold for the receiver (recorded against the sender's
slot with a one-time token), which the first process to unpickle those bytes
takes over: ``queue.put(buf.share()); buf.freebuffer()`` is safe. Bytes that are
never unpickled keep the block until the sender exits. Unpickling the same bytes
a second time takes a new hold only while the block is still held by someone;
once every holder has freed it, it raises :class:`~pynq_alloc.BufferFreedError`
rather than map someone else's memory (the block's tag tells a later block at
the same offset apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Tuple

import numpy as np

from .backends.udmabuf import UdmabufBackend

if TYPE_CHECKING:
    from .buffer import Block, Buffer

_Paths = Tuple[str, str, str]
_backends: Dict[_Paths, UdmabufBackend] = {}


def _backend_for(paths: _Paths) -> UdmabufBackend:
    """A backend over the same driver files as the sender's (one per set of paths)."""
    found = _backends.get(paths)
    if found is None:
        found = _backends[paths] = UdmabufBackend(*paths)
    return found


class ShareHandle:
    """What another process needs to map a buffer's memory; pickles to that buffer."""

    __slots__ = ("_keep", "state")

    def __init__(self, buf: Buffer, block: Block) -> None:
        backend = block.handle.backend
        self.state = _State(
            paths=(backend.sysfs_root, backend.dev_root, backend.run_dir),
            region=block.handle.region.name,
            block_offset=block.offset,
            size=block.size,
            tag=block.tag,
            cacheable=block.cacheable,
            data_offset=int(buf.__array_interface__["data"][0]) - block.virt,
            shape=buf.shape,
            strides=buf.strides,
            dtype=buf.dtype,
        )
        self._keep: Any = block  # the sender's block lives while its handle does

    def __reduce__(self) -> Any:
        # Pickling takes a hold for the receiver, handed over when it unpickles: the
        # block outlives the sender's buffer while the bytes are on their way.
        state = self.state
        ledger = self._keep.handle.ledger
        token = ledger.send(state.block_offset, state.size, state.tag)
        return (_open, (state, token))

    def open(self) -> Buffer:
        """This process's buffer over the shared memory (another hold on the block)."""
        return _open(self.state)

    def __repr__(self) -> str:
        state = self.state
        return (f"ShareHandle({state.region}+{state.block_offset:#x}, shape={state.shape}, "
                f"dtype={state.dtype})")


@dataclass(frozen=True)
class _State:
    paths: _Paths
    region: str
    block_offset: int
    size: int
    tag: int
    cacheable: bool
    data_offset: int
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    dtype: np.dtype[Any]


def _open(state: _State, token: int = 0) -> Buffer:
    from .buffer import Buffer  # buffer imports this module

    backend = _backend_for(state.paths)
    handle = backend.handle(backend.region(state.region))
    return Buffer._held(handle, offset=state.block_offset, size=state.size, tag=state.tag,
                        cacheable=state.cacheable, shape=state.shape, dtype=state.dtype,
                        data_offset=state.data_offset, strides=state.strides, token=token)
