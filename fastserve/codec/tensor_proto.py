"""TensorProto <-> numpy.

Decoding checks a request's TensorProto (dtype, shape, sizes, the operator's limits) and
then reads it with the client package's decoder, which accepts both forms TensorFlow
writes: the packed `tensor_content` bytes (the fast path: one frombuffer, no per-element
work) and the typed `*_val` fields, where fewer values than elements means "repeat the
last one". Encoding (fastserve_client.tensors.from_numpy) writes `tensor_content` for
numeric tensors and `string_val` for strings. Both work on TensorFlow's TensorProto class
and on fastserve's alike.
"""
import numpy as np

from fastserve.codec.shapes import check_implied, checked_shape, element_count
from fastserve.errors import invalid_argument
from fastserve_client import dtypes
from fastserve_client.dtypes import DataType
from fastserve_client.tensors import decode, from_numpy

__all__ = ["from_numpy", "to_numpy"]

_COMPLEX_TYPES = (DataType.DT_COMPLEX64, DataType.DT_COMPLEX128)


def to_numpy(proto, name: str = "", max_elements: int = 0) -> np.ndarray:
    """Decode one TensorProto; `name` is used in error messages. Implied values (fewer values
    than elements: TensorFlow repeats the last one, or fills zeros when there are none) may
    expand the tensor only within codec.shapes' bounds (max_elements: the operator's limit)."""
    try:
        dt = dtypes.from_enum(proto.dtype)
    except ValueError as exc:
        raise invalid_argument(f"input '{name}': {exc}") from None
    shape = checked_shape([d.size for d in proto.tensor_shape.dim], name)
    count = element_count(shape)

    content = proto.tensor_content
    if content and dt.enum != DataType.DT_STRING:
        expected = count * dt.numpy.itemsize
        if len(content) != expected:
            raise invalid_argument(
                f"input '{name}': tensor_content has {len(content)} bytes, "
                f"shape {list(shape)} of {dt.name} needs {expected}"
            )
    else:
        values = getattr(proto, dt.proto_field)
        given = len(values) // 2 if dt.enum in _COMPLEX_TYPES else len(values)  # complex: (real, imaginary) pairs
        if given > count:
            raise invalid_argument(f"input '{name}': {given} values given for shape {list(shape)} ({count} elements)")
        if given < count:
            check_implied(count, given, shape, name, max_elements)
    return decode(proto, dt, shape)
