"""LeRobot feature specs (info.json `features`) and their parquet/Arrow form.

Both v2.1 and v3.0 share these rules: user features first, then the five default features;
vectors are fixed-size lists; images are PNG structs; videos have no column. The parquet
`huggingface` metadata is written in the datasets-3 `Sequence` form, which both openpi's pinned
datasets 3.6 and datasets 4.x read.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

YAM_CAMERAS = (
    "observation.images.head_camera",
    "observation.images.left_wrist_camera",
    "observation.images.right_wrist_camera",
)

_ARROW_SCALARS = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "float16": pa.float16(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "int16": pa.int16(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "bool": pa.bool_(),
    "string": pa.string(),
}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


class FeatureError(ValueError):
    """A feature spec that LeRobot cannot represent."""


def with_defaults(user_features: dict[str, dict]) -> dict[str, dict]:
    """User features followed by the default ones, as info.json lists them."""
    for key in DEFAULT_FEATURES:
        if key in user_features:
            raise FeatureError(f"feature {key!r} is a default feature filled by the writer")
    for key, spec in user_features.items():
        check_spec(key, spec)
    return {**user_features, **DEFAULT_FEATURES}


def check_spec(key: str, spec: dict) -> None:
    """Raise FeatureError naming the feature if its spec is malformed."""
    if "/" in key:
        raise FeatureError(f"feature {key!r}: keys must not contain '/'")
    dtype = spec.get("dtype")
    if dtype not in _ARROW_SCALARS and dtype not in ("image", "video"):
        raise FeatureError(f"feature {key!r}: unsupported dtype {dtype!r}")
    shape = spec.get("shape")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise FeatureError(f"feature {key!r}: shape must be a list of positive ints, got {shape!r}")
    if dtype in ("image", "video") and len(shape) != 3:
        raise FeatureError(f"feature {key!r}: {dtype} shape must have 3 dims, got {shape!r}")
    if dtype not in ("image", "video") and len(shape) > 1:
        raise FeatureError(f"feature {key!r}: only scalars and vectors are supported, got shape {shape!r}")


def video_keys(features: dict[str, dict]) -> list[str]:
    return [k for k, f in features.items() if f["dtype"] == "video"]


def image_keys(features: dict[str, dict]) -> list[str]:
    return [k for k, f in features.items() if f["dtype"] == "image"]


def visual_keys(features: dict[str, dict]) -> list[str]:
    return [k for k, f in features.items() if f["dtype"] in ("image", "video")]


def image_hwc(spec: dict) -> tuple[int, int, int]:
    """(height, width, channels) of an image/video feature, whatever order its shape uses."""
    shape = list(spec["shape"])
    names = spec.get("names")
    if isinstance(names, list) and len(names) == 3 and all(isinstance(n, str) for n in names):
        order = {n: d for n, d in zip(names, shape)}
        if {"height", "width", "channels"} <= set(order):
            return order["height"], order["width"], order["channels"]
    if shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def arrow_type(spec: dict) -> pa.DataType:
    """The parquet column type of a non-video feature."""
    dtype = spec["dtype"]
    if dtype == "image":
        return IMAGE_TYPE
    scalar = _ARROW_SCALARS[dtype]
    shape = spec["shape"]
    if list(shape) == [1]:
        return scalar
    return pa.list_(pa.field("element", scalar), shape[0])


def _hf_feature(spec: dict) -> dict:
    dtype = spec["dtype"]
    if dtype == "image":
        return {"_type": "Image"}
    value = {"dtype": dtype, "_type": "Value"}
    if list(spec["shape"]) == [1]:
        return value
    return {"feature": value, "length": spec["shape"][0], "_type": "Sequence"}


def arrow_schema(features: dict[str, dict]) -> pa.Schema:
    """Arrow schema for the data parquet, columns in feature order, video keys skipped."""
    fields = [pa.field(k, arrow_type(f)) for k, f in features.items() if f["dtype"] != "video"]
    hf = {"info": {"features": {k: _hf_feature(f) for k, f in features.items() if f["dtype"] != "video"}}}
    return pa.schema(fields, metadata={b"huggingface": json.dumps(hf).encode()})


def to_arrow(key: str, spec: dict, values: Any, num_rows: int) -> pa.Array:
    """Convert per-frame values of one feature to its Arrow column, checking length and shape."""
    typ = arrow_type(spec)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if len(values) != num_rows:
            raise FeatureError(f"column {key!r}: {len(values)} rows, expected {num_rows}")
        arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        try:
            return arr if arr.type == typ else arr.cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise FeatureError(f"column {key!r}: type {arr.type} does not match info.json ({typ})") from err
    if spec["dtype"] == "image":
        if len(values) != num_rows:
            raise FeatureError(f"column {key!r}: {len(values)} rows, expected {num_rows}")
        return pa.array(values, type=typ)
    if spec["dtype"] == "string":
        vals = list(values)
        if len(vals) != num_rows:
            raise FeatureError(f"column {key!r}: {len(vals)} rows, expected {num_rows}")
        return pa.array([str(v) for v in vals], type=typ)
    arr = np.asarray(values)
    shape = tuple(spec["shape"])
    if shape == (1,):
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.shape != (num_rows,):
            raise FeatureError(f"column {key!r}: shape {arr.shape}, expected ({num_rows},) per info.json shape [1]")
        return pa.array(arr.astype(spec["dtype"], copy=False), type=typ)
    if arr.shape != (num_rows, *shape):
        raise FeatureError(f"column {key!r}: shape {arr.shape}, expected {(num_rows, *shape)} from info.json")
    flat = pa.array(arr.astype(spec["dtype"], copy=False).reshape(-1), type=typ.value_type)
    return pa.FixedSizeListArray.from_arrays(flat, shape[0])


def column_to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A scalar or fixed-size-list Arrow column as a numpy array ((N,) or (N, D))."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        if pa.types.is_list(column.type):
            column = column.cast(pa.list_(column.type.value_type, len(column[0]) if len(column) else 0))
        width = column.type.list_size
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.asarray(column.to_pylist(), dtype=object)
    return column.to_numpy(zero_copy_only=False)


def conform_table(table: pa.Table, features: dict[str, dict], where: str) -> pa.Table:
    """Reorder and cast `table` to the feature schema; a missing or extra column is an error."""
    schema = arrow_schema(features)
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names and n != "__index_level_0__"]
    if missing or extra:
        raise FeatureError(f"{where}: columns disagree with info.json: missing {missing}, extra {extra}")
    columns = []
    for field in schema:
        col = table.column(field.name)
        if col.type != field.type:
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise FeatureError(f"{where}: column {field.name!r} has type {col.type}, info.json says {field.type}") from err
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
