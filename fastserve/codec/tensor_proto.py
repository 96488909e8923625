"""TensorProto <-> numpy.

Decoding accepts both forms TensorFlow writes: the packed `tensor_content` bytes
(the fast path: one frombuffer, no per-element work) and the typed `*_val`
fields, where fewer values than elements means "repeat the last one".
Encoding writes `tensor_content` for numeric tensors and `string_val` for strings.
Works on TensorFlow's TensorProto class and fastserve.tf_protos' alike (no TensorFlow
import: fastserve.client uses it too).
"""
import numpy as np

from fastserve import dtypes, tf_protos
from fastserve.dtypes import DataType
from fastserve.codec.shapes import check_implied, checked_shape, element_count
from fastserve.errors import invalid_argument

_HALF_TYPES = (DataType.DT_HALF, DataType.DT_BFLOAT16)
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
        return np.frombuffer(content, dtype=dt.numpy).reshape(shape)

    values = getattr(proto, dt.proto_field)
    given = len(values) // 2 if dt.enum in _COMPLEX_TYPES else len(values)  # complex: (real, imaginary) pairs
    if given > count:
        raise invalid_argument(f"input '{name}': {given} values given for shape {list(shape)} ({count} elements)")
    if given < count:
        check_implied(count, given, shape, name, max_elements)
    if dt.enum == DataType.DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif dt.enum in _HALF_TYPES:
        flat = np.array(values, dtype=np.uint16).view(dt.numpy)
    elif dt.enum in _COMPLEX_TYPES:
        flat = np.array(values, dtype=dt.numpy.type(0).real.dtype).view(dt.numpy)
    else:
        # numpy reads a long repeated field fastest as it is, a short one fastest as a list.
        flat = np.array(values if len(values) > 8 else list(values), dtype=dt.numpy)
    return _fill(flat, shape, count)


def _fill(flat: np.ndarray, shape: tuple, count: int) -> np.ndarray:
    if flat.size == count:
        return flat.reshape(shape)
    out = np.empty(count, dtype=flat.dtype)
    if flat.size == 0:  # TensorFlow's rule: no values, zeros (empty strings)
        out[...] = b"" if flat.dtype == object else 0
    else:  # TensorFlow's rule: the last value fills the rest
        out[: flat.size] = flat
        out[flat.size :] = flat[-1]
    return out.reshape(shape)


def from_numpy(array: np.ndarray, proto=None):
    """Encode one array into `proto` (a new TensorProto if None) and return it."""
    if proto is None:
        proto = tf_protos.messages().TensorProto()
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
