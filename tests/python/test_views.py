"""Views know their own device address; results in new memory are plain ndarrays."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynq_alloc import Buffer, InvalidArgumentError, allocate
from pynq_alloc.backends.udmabuf import UdmabufBackend


def element_address(base: Buffer, index: tuple) -> int:
    """The physical address of base[index] computed independently, from strides."""
    return base.device_address + sum(i * s for i, s in zip(index, base.strides))


@pytest.mark.parametrize("make_view, first_index", [
    (lambda b: b[2:], (2, 0)),
    (lambda b: b[::2], (0, 0)),
    (lambda b: b[1:, 3:], (1, 3)),
    (lambda b: b[::-1], (7, 0)),
    (lambda b: b[:, ::-2], (0, 7)),
    (lambda b: b.T, (0, 0)),
    (lambda b: b[3], (3, 0)),
    # squeeze() makes a plain ndarray view and hands it to __array_wrap__: still a view
    (lambda b: b[2:3].squeeze(), (2, 0)),
    (lambda b: np.squeeze(b[1:2, 3:4]), (1, 3)),  # 0-d (numpy 1.26 raised RuntimeError)
    (lambda b: b.reshape(1, 8, 8)[:, 4:].squeeze(axis=0), (4, 0)),
])
def test_view_device_address_is_its_first_element(
        backend: UdmabufBackend, make_view: object, first_index: tuple) -> None:
    buf = allocate((8, 8), "u4", backend=backend)
    view = make_view(buf)  # type: ignore[operator]
    assert isinstance(view, Buffer)
    assert view.device_address == element_address(buf, first_index)


def test_reshape_and_dtype_views_share_the_address(backend: UdmabufBackend) -> None:
    buf = allocate(64, "u4", backend=backend)
    assert buf.reshape(8, 8).device_address == buf.device_address
    assert buf.view("u1")[5:].device_address == buf.device_address + 5
    assert buf.view(np.uint16)[3:].device_address == buf.device_address + 6


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_slicings_address_every_element_correctly(
        backend: UdmabufBackend, data: st.DataObject) -> None:
    shape = data.draw(st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)))
    buf = allocate(shape, data.draw(st.sampled_from(["u1", "u2", "u4", "f8"])), backend=backend)
    buf[...] = np.arange(buf.size).reshape(shape)
    slices = tuple(data.draw(st.slices(n)) for n in shape)
    view = buf[slices]
    if view.size == 0:
        return
    index = tuple(int(i) for i in np.unravel_index(0, view.shape))
    # element 0 of the view lives at (device_address - buffer's) bytes into the buffer
    byte = view.device_address - buf.device_address
    assert 0 <= byte < buf.nbytes
    flat = buf.view(np.ndarray).reshape(-1).view("u1")
    assert flat[byte:byte + buf.itemsize].tobytes() == view[index].tobytes()
    assert view.virtual_address - buf.virtual_address == byte
    buf.freebuffer()


@pytest.mark.parametrize("compute", [
    lambda b: b + 1, lambda b: b * 2.5, np.sqrt, lambda b: b.copy(),
    lambda b: b.astype("f4"), lambda b: b.flatten(), np.copy,
    copy.copy, copy.deepcopy, lambda b: b[[0, 2]],
    lambda b: np.concatenate([b, b]), lambda b: b.reshape(2, 2) @ b.reshape(2, 2),
])
def test_results_in_new_memory_are_plain_ndarrays(backend: UdmabufBackend, compute: object) -> None:
    buf = allocate(4, "u4", backend=backend)
    buf[:] = [1, 2, 3, 4]
    result = compute(buf)  # type: ignore[operator]
    assert type(result) is np.ndarray
    assert not np.may_share_memory(result, buf)


def test_reductions_give_numpy_scalars(backend: UdmabufBackend) -> None:
    buf = allocate(4, "u4", backend=backend)
    buf[:] = [1, 2, 3, 4]
    total, biggest = np.sum(buf), buf.max()
    assert total == 10 and biggest == 4
    assert not isinstance(total, np.ndarray) and not isinstance(biggest, np.ndarray)


def test_in_place_ufuncs_keep_the_buffer(backend: UdmabufBackend) -> None:
    buf = allocate(4, "u4", backend=backend)
    buf[:] = 1
    address = buf.device_address
    buf += 1
    np.multiply(buf, 3, out=buf)
    assert isinstance(buf, Buffer) and buf.device_address == address and list(buf) == [6] * 4


def test_pickle_gives_a_plain_ndarray_of_the_data(backend: UdmabufBackend) -> None:
    buf = allocate((2, 3), "i2", backend=backend)
    buf[...] = [[1, -2, 3], [4, 5, -6]]
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        restored = pickle.loads(pickle.dumps(buf[:, 1:], protocol=protocol))
        assert type(restored) is np.ndarray
        assert restored.tolist() == [[-2, 3], [5, -6]]


def test_a_copy_has_no_device_address(backend: UdmabufBackend) -> None:
    buf = allocate(4, "u4", backend=backend)
    stray = np.ndarray.__new__(Buffer, (4,), "u4")
    # ndarray's own copy keeps the subclass and runs __array_finalize__ with the buffer
    # as its origin: new memory all the same, so it must not inherit the block
    twin = np.ndarray.copy(buf)
    assert type(twin) is Buffer and not np.may_share_memory(twin, buf)
    # numpy keeps the subclass for these too, in new memory
    kept = [buf.take([0, 2]), buf.repeat(2), buf.reshape(2, 2).T.ravel(),
            buf.reshape(2, 2).T.reshape(4), np.zeros_like(buf), np.roll(buf, 1)]
    for array in (stray, twin, *kept):
        assert not np.may_share_memory(array, buf)
        with pytest.raises(InvalidArgumentError, match="not in DMA memory"):
            array.device_address  # noqa: B018
        with pytest.raises(InvalidArgumentError, match="not in DMA memory"):
            array.flush()
