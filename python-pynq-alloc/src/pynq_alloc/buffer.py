"""Buffer: a numpy array over a block of physically contiguous memory.

Built the way ``numpy.memmap`` is: the region's one mapping is handed to
``ndarray.__new__`` as ``buffer=``; ``__array_finalize__`` gives every view of a
buffer (slices, reshapes, ``view('u1')``...) the same block, so it knows its own
physical address; ``__array_wrap__`` and the copying methods return plain
``ndarray`` for results that live in new memory (``b + 1``, ``b.copy()``).

Lifetime, as PYNQ code relies on it: ``freebuffer()``/``close()``/leaving a
``with`` block free the allocation when called on the array that
:func:`~pynq_alloc.allocate` returned, and do nothing when called on a view of
it. The freed array is emptied at once; the block goes back to the pool when no
array refers to it any more: at once when there are no views, otherwise when
the last view is garbage collected (the release is *deferred*, never refused).
Meanwhile the memory stays mapped and reserved, so a surviving view can never
fault nor see another buffer's data, and every access through a freed array or
its views (``b[0]``, ``device_address``, ``flush``...) raises
:class:`~pynq_alloc.errors.BufferFreedError`.

A buffer allocated with ``cache=`` follows PYNQ's frame-cache protocol:
``freebuffer()`` (or garbage collection) hands its :class:`FramePointer` to
``cache.return_pointer()`` instead of freeing, and ``allocate(pointer=...)``
makes a new buffer over the same block.
"""

from __future__ import annotations

import ctypes
import weakref
from typing import TYPE_CHECKING, Any, Optional, Tuple, TypeVar, overload

import numpy as np

from ._platform import current_pid
from .backends.udmabuf import FROM_DEVICE, TO_DEVICE, MappingKind
from .dmabuf import DmaBuf
from .dmabuf import export as export_dmabuf
from .errors import BufferFreedError, InvalidArgumentError
from .share import ShareHandle

if TYPE_CHECKING:
    from .backends.udmabuf import RegionHandle, RegionInfo

_ArrayT = TypeVar("_ArrayT", bound="np.ndarray[Any, Any]")


class Block:
    """One allocation: a byte range of a region, shared by a buffer and all its views.

    When the last array that refers to it goes away, CPython drops the block and
    :meth:`__del__` gives the range back to the region's ledger.
    """

    __slots__ = ("cacheable", "exports", "freed", "handle", "kind", "offset", "owner_pid",
                 "phys", "size", "tag", "virt")

    def __init__(self, handle: RegionHandle, offset: int, size: int, virt: int, kind: str, *,
                 tag: int) -> None:
        self.handle = handle
        self.offset = offset
        self.size = size
        self.tag = tag  # the ledger's tag of this allocation (see Ledger.hold)
        self.exports = 0  # open dma-buf exports (DmaBuf) of it in this process
        self.phys = handle.region.phys_addr + offset
        self.virt = virt
        self.kind = kind
        self.cacheable = kind == MappingKind.CACHED
        self.freed = False
        self.owner_pid = current_pid()
        handle.live_blocks += 1

    def zero_fill(self) -> None:
        """Make the whole block read as zeros, to the CPU and to a device."""
        handle, coherent = self.handle, self.handle.region.coherent
        if not coherent and not self.cacheable:
            # An earlier cached buffer over these bytes (of any process) may have left
            # dirty lines in the CPU cache; evicted later, they would overwrite the zeros
            # (or a device's data) in memory. Drop them before writing around the cache.
            handle.sync(self.offset, self.size, FROM_DEVICE)
        ctypes.memset(self.virt, 0, self.size)
        if not coherent and self.cacheable:
            handle.sync(self.offset, self.size, TO_DEVICE)  # the zeros reach memory

    def handover(self) -> Block:
        """A new block owning this one's memory (frame recycling); this one, already
        freed, stays freed for the arrays that still refer to it and frees nothing."""
        new = Block(self.handle, self.offset, self.size, self.virt, self.kind, tag=self.tag)
        new.owner_pid = self.owner_pid
        self.owner_pid = -1
        return new

    def __del__(self) -> None:
        try:
            self.handle.live_blocks -= 1
            if self.owner_pid == current_pid():
                self.handle.ledger.free(self.offset)
        except Exception:  # interpreter shutdown, or a closed ledger: the slot lock frees it
            pass


class _FreedMarker:
    """Stands in for the block of an array that freebuffer() emptied."""

    freed = True


class FramePointer:
    """A freed buffer's block, kept for reuse: what PYNQ's frame caches hold.

    ``freebuffer()`` of a buffer allocated with ``cache=`` hands one to
    ``cache.return_pointer()``; ``allocate(..., pointer=p)`` builds a new buffer
    over its block (once). A pointer dropped by the cache frees the block.
    """

    __slots__ = ("__weakref__", "block")

    def __init__(self, block: Block) -> None:
        self.block: Optional[Block] = block

    def __repr__(self) -> str:
        block = self.block
        where = f"{block.phys:#x}, {block.size} bytes" if block is not None else "used"
        return f"FramePointer({where})"


def _return_frame(pointer: FramePointer, cache: Any) -> None:
    """A frame-cache buffer was garbage collected: hand its block to the cache, as
    PYNQ's ``__del__`` does."""
    block = pointer.block
    if block is not None:
        block.freed = True
        cache.return_pointer(pointer)


_FREED = _FreedMarker()


class Buffer(np.ndarray):  # type: ignore[type-arg,unused-ignore]
    """A numpy array in physically contiguous memory that a DMA engine can reach.

    Make one with :func:`pynq_alloc.allocate`. Views keep their own
    ``device_address``; results in new memory are plain ``numpy.ndarray``.
    Pickling (and ``copy()``, ``astype()``) gives a plain ``ndarray`` holding a
    copy of the data: a device address means nothing in another process.
    """

    _block: Any = None
    _owns = False  # True only on the array allocate() returned (views share, never own)
    _finalizer: Optional[weakref.finalize[Any, Any]] = None
    #: PYNQ's frame-cache protocol (``allocate(..., cache=...)``): the block's
    #: :class:`FramePointer` and the cache that ``freebuffer()`` hands it to.
    pointer: Optional[FramePointer] = None
    return_to: Any = None

    if TYPE_CHECKING:
        # numpy's stubs say these return ndarray; on a Buffer they return a Buffer (a
        # view, with its own device_address), so that typed code may call flush() on
        # buf.reshape(...), buf.T or buf.view("u1"). view(np.ndarray) is an ndarray.
        def reshape(self, *shape: Any, **kwargs: Any) -> Buffer: ...
        def transpose(self, *axes: Any) -> Buffer: ...
        def swapaxes(self, axis1: Any, axis2: Any) -> Buffer: ...
        def squeeze(self, axis: Any = None) -> Buffer: ...
        def ravel(self, order: Any = "C") -> Buffer: ...
        @overload  # type: ignore[override,unused-ignore]
        def view(self, dtype: type[_ArrayT]) -> _ArrayT: ...
        @overload
        def view(self, dtype: Any, type: type[_ArrayT]) -> _ArrayT: ...
        @overload
        def view(self, dtype: Any = None) -> Buffer: ...
        def view(self, *args: Any, **kwargs: Any) -> Any: ...
        @property
        def T(self) -> Buffer: ...  # noqa: N802 (numpy's name)

    @classmethod
    def _from_block(cls, block: Block, mapping: Any, shape: Tuple[int, ...],
                    dtype: np.dtype[Any]) -> Buffer:
        self: Buffer = np.ndarray.__new__(cls, shape, dtype=dtype, buffer=mapping,
                                          offset=block.offset)
        self._block = block
        self._owns = True
        return self

    @classmethod
    def _held(cls, handle: RegionHandle, *, offset: int, size: int, tag: int, cacheable: bool,
              shape: Tuple[int, ...], dtype: np.dtype[Any], data_offset: int = 0,
              strides: Optional[Tuple[int, ...]] = None, token: int = 0) -> Buffer:
        """An array owning a new hold on the live block ``tag`` at ``offset`` (a shared or
        imported buffer), its first element ``data_offset`` bytes into the block."""
        mapping, kind, base = handle.mapping(cacheable)
        handle.ledger.hold(offset, size, tag, token)  # BufferFreedError once it is gone
        block = Block(handle, offset, size, base + offset, kind, tag=tag)
        self: Buffer = np.ndarray.__new__(cls, shape, dtype=dtype, buffer=mapping,
                                          offset=offset + data_offset, strides=strides)
        self._block = block
        self._owns = True
        return self

    def _attach_cache(self, cache: Any) -> None:
        self.pointer = pointer = FramePointer(self._block)
        self.return_to = cache
        finalizer = weakref.finalize(self, _return_frame, pointer, cache)
        finalizer.atexit = False
        self._finalizer = finalizer

    def __array_finalize__(self, obj: Any) -> None:
        block = getattr(obj, "_block", None)
        if isinstance(block, Block) and np.may_share_memory(self, obj):
            self._block = block
        else:
            self._block = None

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # A ufunc result written into a buffer (out=, +=) stays that buffer; anything
        # else lives in new memory and must not claim a device address.
        if self._block is not None and self._block.freed:
            raise self._freed_error()
        if isinstance(arr, Buffer) and isinstance(arr._block, Block):
            return arr
        if context is None and self._block is not None and np.may_share_memory(arr, self):
            # a view that numpy made as a plain ndarray and hands back to be wrapped
            # (squeeze() does): a view of this buffer, with its device address
            view: Buffer = arr.view(type(self))
            view._block = self._block
            return view
        result = arr.view(np.ndarray)
        if return_scalar or result.shape == ():
            return result[()]  # e.g. np.sum(buf): a numpy scalar, as for plain arrays
        return result

    # -- results in new memory are plain ndarrays --------------------------------------
    def __getitem__(self, index: Any) -> Any:
        if self._block is not None and self._block.freed:
            raise self._freed_error()
        result = super().__getitem__(index)
        if type(result) is Buffer and result._block is None:
            return result.view(np.ndarray)  # fancy indexing copies: no device address
        return result

    def __setitem__(self, index: Any, value: Any) -> None:
        if self._block is not None and self._block.freed:
            raise self._freed_error()
        super().__setitem__(index, value)  # type: ignore[no-untyped-call,unused-ignore]

    def copy(self, order: Any = "C") -> np.ndarray:  # type: ignore[override,type-arg,unused-ignore]
        """A plain ``ndarray`` copy (no device address)."""
        return np.array(self, order=order, copy=True, subok=False)

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> np.ndarray:  # type: ignore[override,type-arg,unused-ignore]
        """Like ``ndarray.astype``; the result is a plain ``ndarray`` in new memory."""
        return self.view(np.ndarray).astype(dtype, *args, **kwargs)

    def flatten(self, order: Any = "C") -> np.ndarray:  # type: ignore[override,type-arg,unused-ignore]
        """A flattened plain ``ndarray`` copy."""
        return self.view(np.ndarray).flatten(order)

    def __copy__(self) -> np.ndarray:  # type: ignore[override,type-arg,unused-ignore]
        return self.copy()

    def __deepcopy__(self, memo: Any) -> np.ndarray:  # type: ignore[override,type-arg,unused-ignore]
        return self.copy()

    def __reduce__(self) -> Any:
        return self.view(np.ndarray).__reduce__()

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.view(np.ndarray).__reduce_ex__(protocol)

    # -- the block behind this array -----------------------------------------------------
    @staticmethod
    def _freed_error() -> BufferFreedError:
        return BufferFreedError(
            "this buffer was freed (freebuffer()/close() on it or on the buffer it views): its "
            "memory may no longer be read, written or handed to a device. Allocate a new "
            "buffer, or keep the buffer until you are done with it and its views.")

    def _live_block(self) -> Block:
        block = self._block
        if isinstance(block, Block) and not block.freed:
            return block
        if block is _FREED or isinstance(block, Block):
            raise self._freed_error()
        raise InvalidArgumentError(
            "this array is not in DMA memory (it is a copy, or was made by "
            "np.ndarray.__new__): allocate it with pynq_alloc.allocate()"
        )

    def _data_address(self) -> int:
        return int(self.__array_interface__["data"][0])

    def _byte_span(self) -> Tuple[int, int]:
        """[low, high) virtual addresses of the bytes this array spans (any strides)."""
        low = high = self._data_address()
        if self.size == 0:
            return low, low
        for extent, stride in zip(self.shape, self.strides):
            if stride < 0:
                low += (extent - 1) * stride
            else:
                high += (extent - 1) * stride
        return low, high + self.itemsize

    # -- addresses and properties -----------------------------------------------------------
    @property
    def device_address(self) -> int:
        """Physical (bus) address of this array's first element, to hand to the PL."""
        block = self._live_block()
        return block.phys + (self._data_address() - block.virt)

    @property
    def physical_address(self) -> int:
        """Alias of :attr:`device_address` (PYNQ's name)."""
        return self.device_address

    @property
    def virtual_address(self) -> int:
        """Address of this array's first element in this process."""
        self._live_block()
        return self._data_address()

    @property
    def coherent(self) -> bool:
        """True when the device sees the CPU's caches (no flush/invalidate needed)."""
        return bool(self._live_block().handle.region.coherent)

    @property
    def cacheable(self) -> bool:
        """True when the CPU caches this memory (False: write-combine or uncached)."""
        return self._live_block().cacheable

    @property
    def region(self) -> RegionInfo:
        """The memory region (u-dma-buf device) this buffer lives in."""
        return self._live_block().handle.region

    @property
    def freed(self) -> bool:
        """True once freebuffer()/close() was called on this buffer or one of its views."""
        block = self._block
        return block is _FREED or (isinstance(block, Block) and block.freed)

    def share(self) -> ShareHandle:
        """A handle that pickles to this array's memory in another process, without a copy.

        Send it through ``multiprocessing`` (queues, pool arguments) or any pickle; the
        receiver gets a :class:`Buffer` with the same ``device_address``, and the block
        stays allocated until every process holding it has freed it or died. Keep this
        buffer (or the handle) alive until the receiver has unpickled it. Plain
        pickling of a buffer still copies the data.
        """
        return ShareHandle(self, self._live_block())

    def export(self) -> DmaBuf:
        """This buffer's allocation as a dma-buf descriptor (``.fd``), for V4L2
        (``V4L2_MEMORY_DMABUF``), DRM PRIME or ``socket.send_fds``; a view exports the
        whole allocation it belongs to. The dma-buf covers whole pages: the block is
        grown in place to its page end first. Close it (``with``, ``close()``) before
        freeing the buffer, and only after any device importer has let go of it;
        :func:`pynq_alloc.from_dmabuf` gives another process of ours the buffer back.
        """
        block = self._live_block()
        return export_dmabuf(block, block.cacheable)

    # -- cache maintenance --------------------------------------------------------------------
    def _sync(self, direction: int) -> None:
        block = self._live_block()
        if block.handle.region.coherent or not block.cacheable:
            return  # coherent port, or an uncached/write-combine mapping: nothing to maintain
        low, high = self._byte_span()
        if high > low:
            block.handle.sync(block.offset + (low - block.virt), high - low, direction)

    def flush(self) -> None:
        """Write the CPU cache lines of exactly this array's bytes back to memory.

        Call after the CPU wrote and before a device reads. No-op when coherent.
        """
        self._sync(TO_DEVICE)

    def invalidate(self) -> None:
        """Drop the CPU cache lines of this array's bytes, so the CPU reads what a device wrote.

        Call after a device wrote and before the CPU reads. No-op when coherent.
        """
        self._sync(FROM_DEVICE)

    def sync_to_device(self) -> None:
        """Same as :meth:`flush`."""
        self._sync(TO_DEVICE)

    def sync_from_device(self) -> None:
        """Same as :meth:`invalidate`."""
        self._sync(FROM_DEVICE)

    # -- lifetime ------------------------------------------------------------------------------
    def freebuffer(self) -> None:
        """Free the allocation; idempotent. On a view, nothing happens (as in PYNQ): only
        the array allocate() returned frees it. With ``cache=``, the block goes to
        ``cache.return_pointer()`` instead. See the module docstring."""
        block = self._block
        if block is _FREED:
            return
        if not isinstance(block, Block):
            raise InvalidArgumentError(
                "this array is not in DMA memory (a copy): there is nothing to free")
        if not self._owns:
            return
        if block.exports:
            raise InvalidArgumentError(
                f"this buffer has {block.exports} open dma-buf export(s): a device or process "
                f"that imported one may still use the memory. Close each export (DmaBuf."
                f"close(), after the importer released it: e.g. VIDIOC_REQBUFS with count 0), "
                f"then free the buffer")
        if self._finalizer is not None:
            self._finalizer.detach()
        block.freed = True
        self._block = _FREED
        # Detach this array from the memory (numpy's own pickling entry point, used
        # in place): it becomes empty, so no access through it can reach the block
        # after the block has gone back to the pool.
        state: Any = (1, (0,), self.dtype, False, b"")
        np.ndarray.__setstate__(self, state)
        pointer, cache = self.pointer, self.return_to
        if pointer is not None and cache is not None:
            self.pointer = None  # PYNQ zeroes it too: the cache owns the block now
            cache.return_pointer(pointer)

    def close(self) -> None:
        """Same as :meth:`freebuffer` (idempotent)."""
        self.freebuffer()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.freebuffer()

    def __repr__(self) -> str:
        if not isinstance(self._block, Block) or self._block.freed:
            state = "freed" if self.freed else "no device address"
            return f"Buffer(<{state}>, dtype={self.dtype})"
        return (f"Buffer({np.array2string(self.view(np.ndarray), threshold=20)}, "
                f"dtype={self.dtype}, device_address={self.device_address:#x})")

    __str__ = np.ndarray.__str__
