"""Ways to reach physically contiguous memory, and the choice between them.

``udmabuf`` talks to the u-dma-buf driver's files; ``sim`` lays out the same
files in a temporary directory (see :mod:`pynq_alloc.backends.sim`) and then
uses the very same ``udmabuf`` code. The choice is: the ``backend=`` argument,
else the ``PYNQ_ALLOC_BACKEND`` environment variable, else ``udmabuf``. There is
no silent fallback to the simulator: on a board without the driver, allocation
fails with :class:`~pynq_alloc.errors.DriverNotFoundError`.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Union

from ..errors import InvalidArgumentError, InvalidTypeError, a_type
from .udmabuf import RegionInfo, UdmabufBackend

__all__ = ["BACKEND_NAMES", "RegionInfo", "UdmabufBackend", "get_backend"]

BACKEND_NAMES = ("udmabuf", "sim")
_backends: Dict[str, UdmabufBackend] = {}


def get_backend(backend: Union[str, UdmabufBackend, None] = None) -> UdmabufBackend:
    """The backend named by ``backend``, by ``$PYNQ_ALLOC_BACKEND``, or the driver."""
    if isinstance(backend, UdmabufBackend):
        return backend
    if backend is not None and not isinstance(backend, str):
        raise InvalidTypeError(
            f"backend={backend!r} is {a_type(backend)}; pass one of "
            f"{', '.join(BACKEND_NAMES)} or a UdmabufBackend instance"
        )
    source = "backend="
    if backend is None:
        backend = os.environ.get("PYNQ_ALLOC_BACKEND") or "udmabuf"
        source = "PYNQ_ALLOC_BACKEND="
    name = backend.strip().lower()
    found: Optional[UdmabufBackend] = _backends.get(name)
    if found is not None:
        return found
    if name == "udmabuf":
        found = UdmabufBackend.from_environment()
    elif name == "sim":
        from .sim import default_simulator

        found = default_simulator().backend()
    else:
        raise InvalidArgumentError(
            f"unknown backend {source}{backend!r}: use one of {', '.join(BACKEND_NAMES)}"
        )
    _backends[name] = found
    return found
