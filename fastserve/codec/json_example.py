"""TensorFlow Serving's REST JSON for :classify and :regress <-> tf.Example protos.

Request: {"signature_name": ..., "context": {feature: value(s)}, "examples": [{...}, ...]}.
A feature's values are JSON numbers (integers -> int64_list, decimals -> float_list),
booleans (int64 0/1), strings or {"b64": ...} (bytes_list); one value or a list of
them, all of one kind. Response: {"results": [[[label, score], ...], ...]} for
classification, {"results": [value, ...]} for regression.
"""
import base64

import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from fastserve.errors import invalid_argument

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def decode_request(doc) -> tuple[str, input_pb2.Input]:
    """A parsed :classify/:regress body -> (signature_name, Input)."""
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_short(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid_argument("JSON Value: not formatted correctly. 'signature_name' key must be a string value.")
    request_input = input_pb2.Input()
    if "context" in doc:
        with_context = request_input.example_list_with_context
        _fill_example(doc["context"], with_context.context)
        examples = with_context.examples
    else:
        examples = request_input.example_list.examples
    if "examples" not in doc:
        raise invalid_argument("JSON Value: When method is classify, key 'examples' is expected and was not found")
    values = doc["examples"]
    if not isinstance(values, list):
        raise invalid_argument("JSON Value: Expecting 'examples' value to be an list/array")
    if not values:
        raise invalid_argument("JSON Value: 'examples' value is an empty array")
    for value in values:
        _fill_example(value, examples.add())
    return signature_name, request_input


def _fill_example(value, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_value(item, name, feature)


def _add_value(value, name: str, feature: feature_pb2.Feature) -> None:
    if isinstance(value, bool):
        _kind(feature, "int64_list", name).value.append(int(value))
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise invalid_argument(f"Feature: {name} has an element out of the int64 range. Only int64 is supported.")
        _kind(feature, "int64_list", name).value.append(value)
    elif isinstance(value, float):
        if abs(value) > _FLOAT32_MAX and np.isfinite(value):
            raise invalid_argument(f"Cannot convert JSON value: {value} to float without loss of precision.")
        _kind(feature, "float_list", name).value.append(value)
    elif isinstance(value, str):
        _kind(feature, "bytes_list", name).value.append(value.encode())
    elif isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str):
        try:
            decoded = base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise invalid_argument(f"Feature: {name}: Unable to base64 decode") from None
        _kind(feature, "bytes_list", name).value.append(decoded)
    else:
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")


def _kind(feature: feature_pb2.Feature, kind: str, name: str):
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[current]}")
    return getattr(feature, kind)


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    names: dict[type, str] = {dict: "Object", list: "Array", str: "String"}
    return names.get(type(value), "Number")


def _short(doc) -> str:
    text = orjson.dumps(doc).decode()
    return text if len(text) <= 200 else text[:200] + "..."


def encode_classification(result: classification_pb2.ClassificationResult) -> bytes:
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    # float32 scalars, so scores print in their shortest float32 form (0.1, not 0.10000000149).
    rows = [[[c.label, np.float32(c.score)] for c in entry.classes] for entry in result.classifications]
    return orjson.dumps({"results": rows}, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_regression(result: regression_pb2.RegressionResult) -> bytes:
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    values = np.fromiter((r.value for r in result.regressions), dtype=np.float32, count=len(result.regressions))
    return orjson.dumps({"results": values}, option=orjson.OPT_SERIALIZE_NUMPY)
