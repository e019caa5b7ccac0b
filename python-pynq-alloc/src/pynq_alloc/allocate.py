"""allocate(): PYNQ's signature, every argument checked before any memory is taken."""

from __future__ import annotations

import inspect
import numbers
import operator
import types
from typing import Any, Tuple, Union

import numpy as np

from ._platform import PAGE_SIZE
from .backends import get_backend
from .backends.udmabuf import RegionHandle, RegionInfo, UdmabufBackend
from .buffer import Block, Buffer, FramePointer
from .errors import (
    InvalidArgumentError,
    InvalidTypeError,
    OutOfMemoryError,
    PynqAllocError,
    a_type,
)
from .units import human_size

_KEYWORDS = ("cacheable", "align", "backend", "cache", "pointer")


def _check_shape(shape: Any) -> Tuple[int, ...]:
    dims = (shape,) if not isinstance(shape, (tuple, list)) else tuple(shape)
    if not dims:
        raise InvalidArgumentError(
            "shape=() is a 0-d array: DMA buffers need at least one element; use shape=(1,)")
    result = []
    for dim in dims:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
            raise InvalidTypeError(
                f"shape={shape!r}: {dim!r} is {a_type(dim)}, not an integer; pass an int "
                f"or a tuple of ints, e.g. allocate(shape=(1024,))")
        value = operator.index(dim)
        if value <= 0:
            raise InvalidArgumentError(
                f"shape={shape!r}: dimension {value} is {'negative' if value < 0 else 'zero'}; "
                f"a DMA buffer needs at least one element in every dimension")
        result.append(value)
    return tuple(result)


def _check_dtype(dtype: Any) -> np.dtype[Any]:
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidTypeError(
            f"dtype={dtype!r} is not a numpy dtype ({exc}); use e.g. 'u4', np.int16 or a "
            f"structured dtype") from None
    if dt.hasobject:
        raise InvalidTypeError(
            f"dtype={dt} holds Python objects (pointers into this process), which a device "
            f"cannot use; use fixed-size numeric or structured dtypes")
    if dt.itemsize == 0:
        raise InvalidTypeError(
            f"dtype={dt} has no size (an unsized string or void type); give a size, e.g. 'S16' "
            f"or 'u1' with a longer shape")
    if dt.kind == "V" and dt.fields is None and dt.subdtype is None:
        raise InvalidTypeError(
            f"dtype={dt} is raw void bytes; use 'u1' (with shape (..., {dt.itemsize})) or a "
            f"structured dtype for descriptors")
    return dt


def _check_align(align: Any) -> int:
    if align is None:
        return PAGE_SIZE
    if isinstance(align, (bool, np.bool_)) or not isinstance(align, numbers.Integral):
        raise InvalidTypeError(f"align={align!r} is not an integer; pass a power of two in bytes")
    value = operator.index(align)
    if value <= 0 or value & (value - 1):
        raise InvalidArgumentError(
            f"align={value} is not a power of two; pass e.g. 4096 or 65536 (bytes)")
    return value


def _check_cacheable(cacheable: Any) -> bool:
    if isinstance(cacheable, (bool, np.bool_)) or cacheable in (0, 1):
        return bool(cacheable)
    raise InvalidTypeError(
        f"cacheable={cacheable!r}: pass True (CPU-cached: flush()/invalidate() around DMA) or "
        f"False (write-combine, the default: no flush needed)")


_ABSENT = object()


def _is_pynq_target(target: Any) -> bool:
    """A PYNQ ``Device`` (an Overlay's ``.device``) or memory bank object, by its shape.

    PYNQ's own drivers pass these (``allocate(..., target=self.device)`` for SG
    descriptors, ``target=memory`` for video frames). pynq is never imported: an
    object with a callable ``allocate`` plus a Device's ``default_memory`` or a
    memory bank's ``device`` is one of them, and means "the default region".
    The attributes are looked up without running them: PYNQ's ``default_memory`` is a
    property that raises on a board ("Overlay is not downloaded", "Multiple memories
    active in design"), and its value is not needed here.
    """
    if isinstance(target, (type, types.ModuleType)) or not callable(
            getattr(target, "allocate", None)):
        return False
    return any(inspect.getattr_static(target, name, _ABSENT) is not _ABSENT
               for name in ("default_memory", "device"))


def _resolve_target(backend: UdmabufBackend, target: Any) -> RegionInfo:
    if target is None or _is_pynq_target(target):
        return backend.region()
    if isinstance(target, RegionInfo):
        return backend.region(target.name)
    if isinstance(target, str):
        return backend.region(target)
    name = getattr(target, "name", None)
    if isinstance(name, str) and hasattr(target, "phys_addr"):
        return backend.region(name)
    raise InvalidTypeError(
        f"target={target!r} is {a_type(target)}; pass a region name such as "
        f"'udmabuf0', a region from pynq_alloc.regions(), a PYNQ Device or memory object "
        f"(meaning the first region), or None for the first region")


def _check_cache(cache: Any) -> Any:
    if cache is not None and not callable(getattr(cache, "return_pointer", None)):
        raise InvalidTypeError(
            f"cache={cache!r} is {a_type(cache)} without a return_pointer() method; "
            f"pass an object whose return_pointer(pointer) takes back the block of a freed "
            f"buffer (as PYNQ's video frame cache does), or leave cache out")
    return cache


def _recycled(pointer: Any, nbytes: int, cacheable: bool) -> Block:
    """The block of a frame handed back by ``freebuffer()``, for a new buffer over it."""
    if not isinstance(pointer, FramePointer):
        raise InvalidTypeError(
            f"pointer={pointer!r} is {a_type(pointer)}; pass the .pointer of a buffer "
            f"allocated with cache= that freebuffer() handed to that cache, or leave pointer out")
    block = pointer.block
    if block is None:
        raise InvalidArgumentError(
            "pointer= was already used by another allocate(pointer=...): each handed-back "
            "block can be taken once; allocate without pointer= for a new block")
    if not block.freed:
        raise InvalidArgumentError(
            f"pointer= names the block at {block.phys:#x}, whose buffer is still in use: call "
            f"freebuffer() on that buffer first (it hands the pointer to its cache)")
    if nbytes > block.size:
        raise InvalidArgumentError(
            f"pointer= names a block of {block.size} bytes, too small for the {nbytes} bytes "
            f"asked for; allocate without pointer= (a new block) or ask for at most "
            f"{block.size} bytes")
    handle = block.handle
    kind = handle.mapping(cacheable)[1]
    if kind != block.kind:
        raise InvalidArgumentError(
            f"pointer= names a block mapped {block.kind}, but cacheable={cacheable} asks for "
            f"{kind}: recycle it with cacheable={block.cacheable}, or allocate without pointer=")
    pointer.block = None
    return block.handover()


def _out_of_memory(backend: UdmabufBackend, region: RegionInfo, nbytes: int, align: int,
                   why: str) -> OutOfMemoryError:
    """The error for a region that cannot hold the request, naming the regions that can."""
    fits = []
    for other in backend.regions():
        if other.name == region.name or other.size < nbytes:
            continue
        try:
            largest = backend.handle(other).ledger.stats().largest_free
        except PynqAllocError:
            continue  # a region this user cannot open is no advice
        # Worst-case padding to reach the alignment is align minus one granule.
        if largest >= nbytes + max(align - 64, 0):
            fits.append((other.name, largest))
    if fits:
        names = ", ".join(f"{name} ({human_size(largest)} free in one block)"
                          for name, largest in fits)
        advice = f"Region(s) with room: {names}: pass target={fits[0][0]!r}."
    else:
        advice = ("No other region has room either: free buffers you no longer need "
                  "(freebuffer()/close()/del), allocate less, or give a region more memory "
                  "(its pool's size in the device tree).")
    # Alignment is physical: a large align= can leave no aligned address in the region.
    first = -(-region.phys_addr // align) * align
    if first + nbytes > region.phys_addr + region.size and nbytes <= region.size:
        why = (f"no address in it ({region.phys_addr:#x}-"
               f"{region.phys_addr + region.size - 1:#x}) is a multiple of align={align:#x} "
               f"with {human_size(nbytes)} after it; pass a smaller align= (a power of two; "
               f"the default is the page size)")
        advice = ""
    return OutOfMemoryError(
        f"cannot allocate {human_size(nbytes)} ({nbytes} bytes) aligned to {align:#x} in region "
        f"{region.name}: {why}." + (f" {advice}" if advice else ""))


def _region_full(handle: RegionHandle) -> str:
    stats = handle.ledger.stats()
    return (f"its largest free block is {stats.largest_free} bytes "
            f"({human_size(stats.largest_free)}); {stats.free} of its {stats.size} bytes are free, "
            f"{stats.blocks} buffer(s) live")


def allocate(shape: Union[int, Tuple[int, ...]], dtype: Any = "u4", target: Any = None,
             **kwargs: Any) -> Buffer:
    """Allocate a :class:`Buffer` of ``shape`` and ``dtype`` in physically contiguous memory.

    The signature and defaults are PYNQ's. ``target`` picks the region: a name
    (the u-dma-buf device name, e.g. ``'udmabuf0'``), a region from
    :func:`regions`, None or a PYNQ ``Device``/memory object for the first region.

    Keywords:

    - ``cacheable`` (default False, as in PYNQ): False maps the region
      write-combine, so the CPU's writes reach memory without ``flush()`` and
      its reads see what a device wrote without ``invalidate()``; True maps it
      CPU-cached (faster for the CPU; ``flush()`` before a device reads,
      ``invalidate()`` before the CPU reads what a device wrote).
    - ``align``: bytes, a power of two, default the page size; alignment is of
      the physical address.
    - ``backend``: ``'udmabuf'``, ``'sim'`` or a backend object.
    - ``cache`` and ``pointer``: PYNQ's frame-cache protocol. A buffer allocated
      with ``cache=c`` has ``.pointer`` and ``.return_to``; its ``freebuffer()``
      (or its garbage collection) hands ``pointer`` to ``c.return_pointer()``
      instead of freeing the block, and ``allocate(..., pointer=p, cache=c)``
      makes a new buffer over that same block (same device address, contents
      kept, not zeroed).

    A new block reads as zeros, to the CPU and to a device, whoever used that
    memory before.
    """
    unknown = sorted(set(kwargs) - set(_KEYWORDS))
    if unknown:
        raise InvalidTypeError(
            f"allocate() got unexpected keyword argument(s) {', '.join(unknown)}; it accepts "
            f"{', '.join(_KEYWORDS)}")
    dims = _check_shape(shape)
    dt = _check_dtype(dtype)
    cacheable = _check_cacheable(kwargs.get("cacheable", False))
    align = _check_align(kwargs.get("align"))
    cache = _check_cache(kwargs.get("cache"))
    pointer = kwargs.get("pointer")
    nbytes = dt.itemsize
    for dim in dims:
        nbytes *= dim
    if pointer is not None:
        block = _recycled(pointer, nbytes, cacheable)
        mapping = block.handle.mapping(cacheable)[0]
    else:
        backend = get_backend(kwargs.get("backend"))
        region = _resolve_target(backend, target)
        if nbytes > region.size or align > region.size:
            raise _out_of_memory(backend, region, nbytes, align,
                                 f"the whole region is {region.size} bytes "
                                 f"({human_size(region.size)})")
        handle = backend.handle(region)
        mapping, kind, base = handle.mapping(cacheable)
        try:
            offset, size, tag = handle.ledger.allocate(nbytes, align)
        except OutOfMemoryError:
            raise _out_of_memory(backend, region, nbytes, align,
                                 _region_full(handle)) from None
        block = Block(handle, offset, size, base + offset, kind, tag=tag)
        block.zero_fill()
    buf = Buffer._from_block(block, mapping, dims, dt)
    if cache is not None:
        buf._attach_cache(cache)
    return buf
