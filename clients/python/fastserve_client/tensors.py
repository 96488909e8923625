"""numpy <-> the wire forms of tensors: TensorProto (TF Serving) and the Open Inference
Protocol's (V2) raw bytes and typed contents. The server's codecs (fastserve.codec) check
a request's sizes and limits first and then read it with these same functions.

Decoding a TensorProto follows TensorFlow: `tensor_content` holds every element packed;
otherwise the dtype's typed field holds them, and fewer values than elements means the
last one repeats (zeros, or empty strings, when there are none). V2 raw bytes are
little-endian values, BOOL one byte each, BYTES each element prefixed by its 4-byte
little-endian length. Malformed data raises ValueError.
"""
import math
import struct

import numpy as np

from fastserve_client import dtypes, protos
from fastserve_client.dtypes import DataType

_HALF_TYPES = (DataType.DT_HALF, DataType.DT_BFLOAT16)
_COMPLEX_TYPES = (DataType.DT_COMPLEX64, DataType.DT_COMPLEX128)

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


# ---------------------------------------------------------------- TensorProto


def from_numpy(array: np.ndarray, proto=None):
    """Encode one array into `proto` (a new TensorProto if None) and return it: tensor_content
    for numbers, string_val for strings."""
    if proto is None:
        proto = protos.tensorflow_serving().TensorProto()
    dt = dtypes.from_numpy(array.dtype)
    proto.dtype = dt.enum
    del proto.tensor_shape.dim[:]
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    if dt.enum == DataType.DT_STRING:
        proto.string_val.extend(_as_bytes(v) for v in array.reshape(-1))
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=dt.numpy).tobytes()
    return proto


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def to_numpy(proto) -> np.ndarray:
    """Decode one TensorProto."""
    return decode(proto, dtypes.from_enum(proto.dtype), tuple(d.size for d in proto.tensor_shape.dim))


def decode(proto, dt: dtypes.DType, shape: tuple[int, ...]) -> np.ndarray:
    """The array of `proto`, whose dtype and shape the caller has read (and checked)."""
    count = math.prod(shape)
    if proto.tensor_content and dt.enum != DataType.DT_STRING:
        return np.frombuffer(proto.tensor_content, dtype=dt.numpy).reshape(shape)
    values = getattr(proto, dt.proto_field)
    if dt.enum == DataType.DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif dt.enum in _HALF_TYPES:
        flat = np.array(values, dtype=np.uint16).view(dt.numpy)
    elif dt.enum in _COMPLEX_TYPES:  # (real, imaginary) pairs
        flat = np.array(values, dtype=dt.numpy.type(0).real.dtype).view(dt.numpy)
    else:
        # numpy reads a long repeated field fastest as it is, a short one fastest as a list.
        flat = np.array(values if len(values) > 8 else list(values), dtype=dt.numpy)
    if flat.size == count:
        return flat.reshape(shape)
    if flat.size > count:
        raise ValueError(f"{flat.size} values given for shape {list(shape)} ({count} elements)")
    out = np.empty(count, dtype=flat.dtype)
    if flat.size == 0:  # TensorFlow's rule: no values, zeros (empty strings)
        out[...] = b"" if flat.dtype == object else 0
    else:  # TensorFlow's rule: the last value fills the rest
        out[: flat.size] = flat
        out[flat.size :] = flat[-1]
    return out.reshape(shape)


# ---------------------------------------------------------------- V2


def datatype_of(array: np.ndarray) -> str:
    v2 = dtypes.from_numpy(array.dtype).v2
    if v2 is None:
        raise ValueError(f"dtype {array.dtype} has no Open Inference Protocol datatype")
    return v2


def to_raw(array: np.ndarray) -> bytes:
    if array.dtype == object or array.dtype.kind in "SU":
        parts = []
        for value in array.reshape(-1):
            value = value.encode() if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(value)))
            parts.append(value)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def split_bytes(raw: bytes) -> np.ndarray:
    """The elements of raw BYTES data, as a flat object array."""
    items: list[bytes] = []
    offset, view = 0, memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError(f"BYTES element {len(items)} has a truncated 4-byte length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError(f"BYTES element {len(items)} declares {length} bytes but only {len(raw) - offset} remain")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def from_raw(raw: bytes, datatype: str, shape) -> np.ndarray:
    """A V2 tensor from its raw bytes (hosts are little-endian, as the protocol)."""
    flat = split_bytes(raw) if datatype == BYTES else np.frombuffer(raw, dtype=_dtype(datatype).numpy)
    return flat.reshape(tuple(shape))


def from_contents(contents, datatype: str, shape) -> np.ndarray:
    """A V2 tensor from its typed InferTensorContents field."""
    values = getattr(contents, CONTENTS_FIELD[datatype])
    if datatype == BYTES:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        flat = np.array(values, dtype=_dtype(datatype).numpy)
    return flat.reshape(tuple(shape))


def _dtype(datatype: str) -> dtypes.DType:
    try:
        return dtypes.BY_V2[datatype]
    except KeyError:
        raise ValueError(f"unknown datatype {datatype!r}") from None
