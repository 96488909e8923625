"""Open Inference Protocol (V2) tensors <-> numpy, in its three forms.

* JSON "data": a flat (or nested) list in row-major order; BYTES elements are strings.
* raw bytes (REST binary-data extension, gRPC raw_input_contents/raw_output_contents):
  little-endian values; BOOL one byte each; BYTES each element prefixed by its
  4-byte little-endian length.
* gRPC typed contents (InferTensorContents): one repeated field per datatype family.

Datatypes map to TensorFlow dtypes through the one dtype table (fastserve.dtypes).
Every error names the tensor.
"""
import struct

import numpy as np

from fastserve import dtypes
from fastserve.codec import json_tensor
from fastserve.codec.shapes import checked_shape, element_count
from fastserve.errors import invalid_argument

BYTES = "BYTES"

# InferTensorContents field per V2 datatype (FP16/BF16 travel only as raw bytes).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def dtype_of(datatype: str, name: str) -> dtypes.DType:
    try:
        return dtypes.BY_V2[datatype]
    except KeyError:
        raise invalid_argument(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(sorted(dtypes.BY_V2))}"
        ) from None


def datatype_of(array: np.ndarray, name: str) -> str:
    v2 = dtypes.from_numpy(array.dtype).v2
    if v2 is None:
        raise invalid_argument(f"output '{name}': dtype {array.dtype} has no Open Inference Protocol datatype")
    return v2


def _shaped(flat: np.ndarray, shape, name: str, what: str) -> np.ndarray:
    shape = checked_shape(shape, name)
    count = element_count(shape)
    if flat.size != count:
        raise invalid_argument(
            f"input '{name}': shape {list(shape)} needs {count} elements but {what} holds {flat.size}"
        )
    return flat.reshape(shape)


# ---------------------------------------------------------------- JSON


def from_json(data, datatype: str, shape, name: str) -> np.ndarray:
    dt = dtype_of(datatype, name)
    array = json_tensor.to_array(data, dt.enum, name)
    return _shaped(array.reshape(-1), shape, name, "'data'")


def to_json(array: np.ndarray) -> list:
    flat = array.reshape(-1)
    if flat.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    if flat.dtype.kind == "f" and flat.dtype.itemsize < 4:  # FP16, BF16: JSON numbers via float32
        flat = flat.astype(np.float32)
    return flat.tolist()


# ---------------------------------------------------------------- raw bytes


def from_raw(raw: bytes, datatype: str, shape, name: str) -> np.ndarray:
    dt = dtype_of(datatype, name)
    shape = checked_shape(shape, name)
    if datatype == BYTES:
        return _shaped(_split_bytes(raw, name), shape, name, "the raw BYTES data")
    needed = element_count(shape) * dt.numpy.itemsize
    if len(raw) != needed:
        raise invalid_argument(f"input '{name}': shape {list(shape)} of {datatype} needs {needed} bytes but got {len(raw)}")
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)  # hosts are little-endian


def _split_bytes(raw: bytes, name: str) -> np.ndarray:
    items, offset, view = [], 0, memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise invalid_argument(f"input '{name}': BYTES element {len(items)} has a truncated 4-byte length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise invalid_argument(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes but only {len(raw) - offset} remain"
            )
        items.append(bytes(view[offset:offset + length]))
        offset += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def to_raw(array: np.ndarray) -> bytes:
    if array.dtype == object or array.dtype.kind in "SU":
        parts = []
        for value in array.reshape(-1):
            value = value.encode() if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(value)))
            parts.append(value)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


# ---------------------------------------------------------------- gRPC typed contents


def from_contents(contents, datatype: str, shape, name: str) -> np.ndarray:
    dt = dtype_of(datatype, name)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise invalid_argument(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    values = getattr(contents, field)
    for other in set(CONTENTS_FIELD.values()) - {field}:
        if len(getattr(contents, other)):
            raise invalid_argument(f"input '{name}': {datatype} data must be in contents.{field}, not contents.{other}")
    if datatype == BYTES:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        try:
            flat = np.array(values, dtype=dt.numpy)
        except OverflowError:
            raise invalid_argument(f"input '{name}': a value in contents.{field} is out of range for {datatype}") from None
    return _shaped(flat, shape, name, f"contents.{field}")
