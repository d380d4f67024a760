"""Our msgpack-numpy codec produces openpi's wire bytes and reads them back."""

import msgpack
import numpy as np
import pytest

from recap_ray.serve import msgpack_numpy


def test_array_wire_bytes_match_openpi_layout():
    arr = np.array([0, 1, 2], dtype=np.int32)
    expected = msgpack.packb({"x": {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": "<i4", b"shape": [3]}})
    assert msgpack_numpy.packb({"x": arr}) == expected
    assert msgpack_numpy.Packer().pack({"x": arr}) == expected


def test_scalar_wire_bytes():
    expected = msgpack.packb({b"__npgeneric__": True, b"data": 1.5, b"dtype": "<f4"})
    assert msgpack_numpy.packb(np.float32(1.5)) == expected
    value = msgpack_numpy.unpackb(expected)
    assert type(value) is np.float32 and value == 1.5
    assert msgpack_numpy.unpackb(msgpack_numpy.packb(np.bool_(True))) is np.True_


@pytest.mark.parametrize("dtype", ["uint8", "int64", "float32", "float64", "bool", ">i2"])
def test_round_trip(dtype):
    arr = (np.arange(24).reshape(2, 3, 4) % 2 if dtype == "bool" else np.arange(24).reshape(2, 3, 4)).astype(dtype)
    obs = {"images": {"cam_high": arr}, "state": arr[0, 0], "prompt": "hi", "tuple": (1, 2), "raw": b"\x00"}
    back = msgpack_numpy.unpackb(msgpack_numpy.packb(obs))
    np.testing.assert_array_equal(back["images"]["cam_high"], arr)
    assert back["images"]["cam_high"].dtype == arr.dtype
    assert back["prompt"] == "hi" and back["tuple"] == [1, 2] and back["raw"] == b"\x00"
    assert not back["state"].flags.writeable  # views of the message buffer, as openpi's decoder gives


def test_non_contiguous_arrays_travel_in_c_order():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4).T
    np.testing.assert_array_equal(msgpack_numpy.unpackb(msgpack_numpy.packb(arr)), arr)


@pytest.mark.parametrize("value", [np.array([object()], dtype=object), np.zeros(2, dtype=np.complex64),
                                   np.zeros(2, dtype=[("a", "i4")]), np.complex128(1j)])
def test_unsupported_dtypes_are_rejected(value):
    with pytest.raises(ValueError, match="Unsupported dtype"):
        msgpack_numpy.packb({"x": value})
