"""TensorProto <-> numpy against TensorFlow's own encoder/decoder."""
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from fastserve.codec import tensor_proto
from fastserve.errors import ServingError

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.array([[1.5, -2.25]], np.float64),
    np.array([1, -2, 3], np.int32),
    np.array([1, 2**40], np.int64),
    np.array([0, 255], np.uint8),
    np.array([-128, 127], np.int8),
    np.array([-5, 5], np.int16),
    np.array([7, 65535], np.uint16),
    np.array([7, 2**32 - 1], np.uint32),
    np.array([7, 2**64 - 1], np.uint64),
    np.array([True, False, True]),
    np.array([0.5, -1.0], np.float16),
    np.array([0.5, -1.0, 3.0], ml_dtypes.bfloat16),
    np.array([1 + 2j], np.complex64),
    np.array([1 - 2j], np.complex128),
    np.array([b"a", b"\xffbin"], object).reshape(2, 1),
    np.zeros((0, 3), np.float32),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: str(a.dtype))
def test_decode_what_tensorflow_encodes(array):
    proto = tf.make_tensor_proto(array)  # TF's own choice of tensor_content / *_val
    decoded = tensor_proto.to_numpy(proto, "x")
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: str(a.dtype))
def test_encode_what_tensorflow_decodes(array):
    proto = tensor_proto.from_numpy(array)
    decoded = tf.make_ndarray(proto)
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded.astype(array.dtype) if array.dtype != object else decoded, array)


@pytest.mark.parametrize(
    "dtype, field, values, np_dtype",
    [
        (types_pb2.DT_FLOAT, "float_val", [1.0, 2.0, 3.0, 4.0], np.float32),
        (types_pb2.DT_INT64, "int64_val", [1, 2, 3, 4], np.int64),
        (types_pb2.DT_BOOL, "bool_val", [True, False, True, True], np.bool_),
        (types_pb2.DT_HALF, "half_val", np.array([1, 2, 3, 4], np.float16).view(np.uint16).tolist(), np.float16),
        (types_pb2.DT_BFLOAT16, "half_val", np.array([1, 2, 3, 4], ml_dtypes.bfloat16).view(np.uint16).tolist(), ml_dtypes.bfloat16),
    ],
)
def test_typed_fields(dtype, field, values, np_dtype):
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    getattr(proto, field).extend(values)
    decoded = tensor_proto.to_numpy(proto)
    assert decoded.dtype == np.dtype(np_dtype)
    np.testing.assert_array_equal(decoded.astype(np.float64), np.array([[1, 2], [3, 4]], np.float64) if dtype != types_pb2.DT_BOOL else [[1, 0], [1, 1]])


def test_fewer_values_repeat_the_last_like_tensorflow():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[7.0])
    proto.tensor_shape.dim.add(size=3)
    assert tensor_proto.to_numpy(proto).tolist() == [7.0, 7.0, 7.0]
    assert tf.make_ndarray(proto).tolist() == [7.0, 7.0, 7.0]


@pytest.mark.parametrize("dtype, field", [(types_pb2.DT_FLOAT, "float_val"), (types_pb2.DT_STRING, "string_val")])
def test_a_shape_without_values_is_zeros_like_tensorflow(dtype, field):
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape={"dim": [{"size": 2}, {"size": 1}]})
    expected = tf.make_ndarray(proto)  # zeros; TensorFlow's Python helper gives str for the empty strings
    decoded = tensor_proto.to_numpy(proto)
    assert decoded.shape == (2, 1)
    assert decoded.tolist() == ([[b""], [b""]] if dtype == types_pb2.DT_STRING else expected.tolist())


@pytest.mark.parametrize("given", [0, 1, 3])
def test_implied_values_may_not_expand_a_request_without_bound(given):
    """A few bytes may not ask for gigabytes: implied elements are bounded before anything is allocated."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0] * given)
    proto.tensor_shape.dim.add(size=2**28)
    proto.tensor_shape.dim.add(size=1)
    with pytest.raises(ServingError) as err:
        tensor_proto.to_numpy(proto, "x")
    assert err.value.code.name == "INVALID_ARGUMENT" and "implied values" in err.value.message
    proto.tensor_shape.dim[0].size = 2**40  # far beyond what an int64 count of bytes allows
    with pytest.raises(ServingError):
        tensor_proto.to_numpy(proto, "x")
    proto.tensor_shape.dim[0].size = 2**28
    assert tensor_proto.to_numpy(proto, "x", max_elements=2**28).shape == (2**28, 1)  # the operator allows it


def test_rank_above_32_is_refused_before_anything_is_built():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"s"], tensor_shape={"dim": [{"size": 1}] * 33})
    with pytest.raises(ServingError) as err:
        tensor_proto.to_numpy(proto, "s")
    assert err.value.code.name == "INVALID_ARGUMENT" and "rank 33 is above the limit of 32" in err.value.message
    proto.tensor_shape.dim.pop()
    assert tensor_proto.to_numpy(proto, "s").ndim == 32


@pytest.mark.parametrize(
    "proto, text",
    [
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 3, tensor_shape={"dim": [{"size": 1}]}), "tensor_content has 3 bytes"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1, 2, 3], tensor_shape={"dim": [{"size": 2}]}), "3 values given"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE), "unsupported tensor dtype DT_RESOURCE"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"dim": [{"size": -1}]}), "negative dimension"),
    ],
)
def test_bad_tensors_are_invalid_argument_naming_the_input(proto, text):
    with pytest.raises(ServingError) as err:
        tensor_proto.to_numpy(proto, "x")
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert "input 'x'" in err.value.message and text in err.value.message
