"""Open Inference Protocol (V2) tensors <-> numpy, in its three forms, checked as requests.

* JSON "data": a flat (or nested) list in row-major order; BYTES elements are strings.
* raw bytes (REST binary-data extension, gRPC raw_input_contents/raw_output_contents):
  little-endian values; BOOL one byte each; BYTES each element prefixed by its
  4-byte little-endian length (fastserve_client.tensors reads and writes them).
* gRPC typed contents (InferTensorContents): one repeated field per datatype family.

Datatypes map to TensorFlow dtypes through the one dtype table (fastserve_client.dtypes).
Every error names the tensor.
"""
import numpy as np

from fastserve.codec import json_tensor
from fastserve.codec.shapes import checked_shape, element_count
from fastserve.errors import invalid_argument
from fastserve_client import dtypes, tensors
from fastserve_client.tensors import BYTES, CONTENTS_FIELD, to_raw

__all__ = ["datatype_of", "from_contents", "from_json", "from_raw", "to_json", "to_raw"]


def dtype_of(datatype: str, name: str) -> dtypes.DType:
    try:
        return dtypes.BY_V2[datatype]
    except KeyError:
        raise invalid_argument(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(sorted(dtypes.BY_V2))}"
        ) from None


def datatype_of(array: np.ndarray, name: str) -> str:
    try:
        return tensors.datatype_of(array)
    except ValueError as exc:
        raise invalid_argument(f"output '{name}': {exc}") from None


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
        try:
            items = tensors.split_bytes(raw)
        except ValueError as exc:
            raise invalid_argument(f"input '{name}': {exc}") from None
        return _shaped(items, shape, name, "the raw BYTES data")
    needed = element_count(shape) * dt.numpy.itemsize
    if len(raw) != needed:
        raise invalid_argument(f"input '{name}': shape {list(shape)} of {datatype} needs {needed} bytes but got {len(raw)}")
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)  # hosts are little-endian


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
