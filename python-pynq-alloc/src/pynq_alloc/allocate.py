"""allocate(): PYNQ's signature, every argument checked before any memory is taken."""

from __future__ import annotations

import numbers
import operator
from typing import Any, Tuple, Union

import numpy as np

from ._platform import PAGE_SIZE
from .backends import get_backend
from .backends.udmabuf import RegionInfo, UdmabufBackend
from .buffer import Block, Buffer
from .errors import InvalidArgumentError, InvalidTypeError, OutOfMemoryError

_KEYWORDS = ("cacheable", "align", "backend")


def _check_shape(shape: Any) -> Tuple[int, ...]:
    dims = (shape,) if not isinstance(shape, (tuple, list)) else tuple(shape)
    if not dims:
        raise InvalidArgumentError(
            "shape=() is a 0-d array: DMA buffers need at least one element; use shape=(1,)")
    result = []
    for dim in dims:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
            raise InvalidTypeError(
                f"shape={shape!r}: {dim!r} is a {type(dim).__name__}, not an integer; pass an int "
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
    raise InvalidTypeError(f"cacheable={cacheable!r}: pass True or False")


def _resolve_target(backend: UdmabufBackend, target: Any) -> RegionInfo:
    if target is None:
        return backend.region()
    if isinstance(target, RegionInfo):
        return backend.region(target.name)
    if isinstance(target, str):
        return backend.region(target)
    name = getattr(target, "name", None)
    if isinstance(name, str) and hasattr(target, "phys_addr"):
        return backend.region(name)
    raise InvalidTypeError(
        f"target={target!r} is a {type(target).__name__}; pass a region name such as "
        f"'udmabuf0', a region from pynq_alloc.regions(), or None for the first region")


def allocate(shape: Union[int, Tuple[int, ...]], dtype: Any = "u4", target: Any = None,
             **kwargs: Any) -> Buffer:
    """Allocate a :class:`Buffer` of ``shape`` and ``dtype`` in physically contiguous memory.

    The signature is PYNQ's. ``target`` picks the region: a name (the u-dma-buf
    device name, e.g. ``'udmabuf0'``), a region from :func:`regions`, or None for
    the first region. Keywords: ``cacheable`` (default True; False maps the
    region write-combine, where flush/invalidate are not needed), ``align``
    (bytes, a power of two, default the page size; alignment is of the physical
    address), ``backend`` (``'udmabuf'``, ``'sim'`` or a backend object).

    The contents are undefined, as with ``numpy.empty``: fresh driver memory is
    zero, a block given back by an earlier buffer keeps that buffer's data.
    """
    unknown = sorted(set(kwargs) - set(_KEYWORDS))
    if unknown:
        raise InvalidTypeError(
            f"allocate() got unexpected keyword argument(s) {', '.join(unknown)}; it accepts "
            f"{', '.join(_KEYWORDS)}")
    dims = _check_shape(shape)
    dt = _check_dtype(dtype)
    cacheable = _check_cacheable(kwargs.get("cacheable", True))
    align = _check_align(kwargs.get("align"))
    backend = get_backend(kwargs.get("backend"))
    region = _resolve_target(backend, target)
    nbytes = dt.itemsize
    for dim in dims:
        nbytes *= dim
    if nbytes > region.size or align > region.size:
        raise OutOfMemoryError(
            f"cannot allocate {nbytes} bytes aligned to {align:#x} in region {region.name}: the "
            f"whole region is {region.size} bytes. Allocate less, or give the region more memory "
            f"(its 'size' and memory-region in the device tree).")
    handle = backend.handle(region)
    mapping, kind, base = handle.mapping(cacheable)
    offset, size = handle.ledger.allocate(nbytes, align)
    block = Block(handle, offset, size, base + offset, kind)
    return Buffer._from_block(block, mapping, dims, dt)
