"""openpi's msgpack + numpy wire codec, reimplemented (serving spec §1.4); same bytes on the wire.

An ndarray travels as a map {b"__ndarray__": True, b"data": C-order bytes, b"dtype": dtype.str,
b"shape": list}; a numpy scalar as {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}.
Object, void/structured (including bfloat16) and complex dtypes are rejected when packing.
Decoded arrays are read-only views of the message buffer; copy before editing in place.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack
import numpy as np

_UNSUPPORTED_KINDS = ("V", "O", "c")


def pack_array(obj: Any) -> Any:
    """msgpack `default` hook: numpy arrays and scalars to their marker maps."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _UNSUPPORTED_KINDS:
        raise ValueError(f"Unsupported dtype: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def unpack_array(obj: dict) -> Any:
    """msgpack `object_hook`: marker maps back to numpy arrays and scalars."""
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


Packer = functools.partial(msgpack.Packer, default=pack_array)
packb = functools.partial(msgpack.packb, default=pack_array)
unpackb = functools.partial(msgpack.unpackb, object_hook=unpack_array)
