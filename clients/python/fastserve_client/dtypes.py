"""The one dtype table: TensorFlow DataType enum <-> numpy dtype <-> V2 datatype name.

The client's codecs and the server's (which depends on this package) read this table;
nothing else maps dtypes. bfloat16 needs ml_dtypes (installed with the server; a client
alone supports it once ml_dtypes is installed).
"""
from dataclasses import dataclass

import numpy as np

from fastserve_client import protos

try:
    import ml_dtypes
except ImportError:  # optional for the client: only bfloat16 tensors need it
    ml_dtypes = None  # type: ignore[assignment]  # checked before use

DataType = protos.tensorflow_serving().DataType  # the tensorflow.DataType enum


@dataclass(frozen=True)
class DType:
    enum: int  # tensorflow.DataType value
    name: str  # "DT_FLOAT"
    numpy: np.dtype  # object dtype for strings
    v2: str | None  # Open Inference Protocol datatype, None if it has none
    proto_field: str  # TensorProto's typed repeated field


_ROWS = [
    (DataType.DT_FLOAT, np.float32, "FP32", "float_val"),
    (DataType.DT_DOUBLE, np.float64, "FP64", "double_val"),
    (DataType.DT_INT32, np.int32, "INT32", "int_val"),
    (DataType.DT_UINT8, np.uint8, "UINT8", "int_val"),
    (DataType.DT_INT16, np.int16, "INT16", "int_val"),
    (DataType.DT_INT8, np.int8, "INT8", "int_val"),
    (DataType.DT_STRING, np.object_, "BYTES", "string_val"),
    (DataType.DT_COMPLEX64, np.complex64, None, "scomplex_val"),
    (DataType.DT_INT64, np.int64, "INT64", "int64_val"),
    (DataType.DT_BOOL, np.bool_, "BOOL", "bool_val"),
    (DataType.DT_UINT16, np.uint16, "UINT16", "int_val"),
    (DataType.DT_COMPLEX128, np.complex128, None, "dcomplex_val"),
    (DataType.DT_HALF, np.float16, "FP16", "half_val"),
    (DataType.DT_UINT32, np.uint32, "UINT32", "uint32_val"),
    (DataType.DT_UINT64, np.uint64, "UINT64", "uint64_val"),
]
if ml_dtypes is not None:
    _ROWS.append((DataType.DT_BFLOAT16, ml_dtypes.bfloat16, "BF16", "half_val"))

BY_ENUM: dict[int, DType] = {}
BY_NUMPY: dict[np.dtype, DType] = {}
BY_V2: dict[str, DType] = {}
for _enum, _np, _v2, _field in _ROWS:
    _dt = DType(_enum, DataType.Name(_enum), np.dtype(_np), _v2, _field)
    BY_ENUM[_enum] = _dt
    BY_NUMPY[_dt.numpy] = _dt
    if _v2:
        BY_V2[_v2] = _dt


def from_enum(enum: int) -> DType:
    try:
        return BY_ENUM[enum]
    except KeyError:
        raise ValueError(f"unsupported tensor dtype {DataType.Name(enum) if enum in DataType.values() else enum}") from None


def from_numpy(dtype: np.dtype) -> DType:
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return BY_ENUM[DataType.DT_STRING]
    try:
        return BY_NUMPY[dtype]
    except KeyError:
        raise ValueError(f"unsupported numpy dtype {dtype}") from None


def name(enum: int) -> str:
    """DT_FLOAT-style name of a DataType value, for messages."""
    try:
        return DataType.Name(enum)
    except ValueError:
        return str(enum)
