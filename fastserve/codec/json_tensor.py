"""TensorFlow Serving's REST JSON tensors <-> numpy.

Request: {"signature_name": ..., "instances": [...]} (row format) or {"inputs": ...}
(columnar format). Binary values are {"b64": "..."}. Response: "predictions" for row
format, "outputs" for columnar; string outputs whose name ends in "_bytes" are b64.
"""
import base64
import json

import numpy as np
import orjson

from fastserve._native.json_numbers import parse_numeric_request
from fastserve.codec.shapes import check_rank
from fastserve.errors import invalid_argument
from fastserve_client import dtypes
from fastserve_client.dtypes import DataType

_INT_KINDS = "iu"
_NUMBER_KINDS = "iuf"
_JSON_FLOAT = {np.dtype(np.float16), np.dtype(dtypes.BY_ENUM[DataType.DT_BFLOAT16].numpy)}


def loads(body: bytes):
    """Parse a request body. NaN/Infinity literals are accepted, as TF Serving does (Python's
    parser reads them where orjson refuses); a lone surrogate escape ("\\udcff") is refused."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            doc = json.loads(body)
            json.dumps(doc, ensure_ascii=False).encode()  # fails on a lone surrogate, which no UTF-8 holds
        except RecursionError:
            raise invalid_argument("JSON Parse error: the document nests too deep") from None
        except (ValueError, UnicodeError):
            raise invalid_argument(f"JSON Parse error: {exc}") from None
        return doc


def dumps(document) -> bytes:
    """Serialize a response; non-finite floats become NaN/Infinity literals like TF Serving's."""
    try:
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(_plain(document)).encode()


def _dumps_outputs(document, outputs: dict) -> bytes:
    """orjson writes NaN/Inf as null; TF Serving writes NaN/Infinity literals, so do that."""
    if any(isinstance(a, np.ndarray) and a.dtype.kind == "f" and not np.isfinite(a).all() for a in outputs.values()):
        return json.dumps(_plain(document)).encode()
    return dumps(document)


# ---------------------------------------------------------------- request decoding


class PredictBody:
    """A :predict request body, parsed once: its signature name, then its inputs for a signature.

    A body that is only {"instances" | "inputs": <nested array of numbers>} or {"inputs":
    {"<name>": <nested array of numbers>}} (and maybe a "signature_name") is read straight
    into one array (csrc/json_numbers.pyx); any other goes through orjson and
    decode_request. Both give the same arrays and the same errors.
    """

    __slots__ = ("_body", "_numbers", "_doc")

    def __init__(self, body: bytes):
        self._body = body
        self._numbers = parse_numeric_request(body)  # (signature name | None, key, input name | None, array) or None
        self._doc = None if self._numbers is not None else loads(body)

    @property
    def signature_name(self) -> str:
        """The requested signature; "" when the body names none."""
        if self._numbers is not None:
            return self._numbers[0] or ""
        name = self._doc.get("signature_name", "") if isinstance(self._doc, dict) else ""
        if not isinstance(name, str):
            raise invalid_argument("JSON Value: not formatted correctly. 'signature_name' key must be a string value.")
        return name

    def decode(self, input_dtypes: dict[str, int]) -> tuple[dict[str, np.ndarray], bool]:
        """({input name: array}, row_format) for a signature with these input dtypes."""
        if self._numbers is not None:
            _, key, name, raw = self._numbers
            if name is None and len(input_dtypes) == 1:  # the only input, unnamed
                name = next(iter(input_dtypes))
            dtype_enum = input_dtypes.get(name, DataType.DT_STRING) if name is not None else DataType.DT_STRING
            if name is not None and dtype_enum != DataType.DT_STRING:
                return {name: _typed(raw, dtype_enum, name)}, key == "instances"
        if self._doc is None:  # numbers, but for a signature they do not fit: decode_request says why
            self._doc = loads(self._body)
        return decode_request(self._doc, input_dtypes)


def decode_request(doc, input_dtypes: dict[str, int]) -> tuple[dict[str, np.ndarray], bool]:
    """Turn a parsed predict request into {input name: array}; returns (inputs, row_format)."""
    if not isinstance(doc, dict):
        raise invalid_argument("JSON Value: request body must be a JSON object")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument("JSON Value: Not formatted correctly expecting only one of 'inputs' or 'instances' keys")
    if has_instances:
        return _decode_rows(doc["instances"], input_dtypes), True
    if has_inputs:
        return _decode_columns(doc["inputs"], input_dtypes), False
    raise invalid_argument("JSON Value: Missing 'inputs' or 'instances' key")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _is_named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _only_input(input_dtypes: dict[str, int]) -> str:
    if len(input_dtypes) != 1:
        raise invalid_argument(
            f"the signature has {len(input_dtypes)} inputs ({', '.join(sorted(input_dtypes))}): "
            "name each one in the request"
        )
    return next(iter(input_dtypes))


def _decode_rows(instances, input_dtypes) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid_argument("'instances' must be a list of instances")
    if not instances:
        raise invalid_argument("'instances' is an empty list")
    if not _is_named(instances[0]):
        name = _only_input(input_dtypes)
        return {name: to_array(instances, input_dtypes[name], name)}
    names = set(instances[0])
    for i, instance in enumerate(instances):
        if not _is_named(instance) or set(instance) != names:
            raise invalid_argument(
                f"instance {i} of 'instances' must be an object with the same keys as instance 0: {sorted(names)}"
            )
    return {
        name: to_array([instance[name] for instance in instances], _input_dtype(input_dtypes, name), name)
        for name in names
    }


def _decode_columns(inputs, input_dtypes) -> dict[str, np.ndarray]:
    if _is_named(inputs):
        return {name: to_array(value, _input_dtype(input_dtypes, name), name) for name, value in inputs.items()}
    name = _only_input(input_dtypes)
    return {name: to_array(inputs, input_dtypes[name], name)}


def _input_dtype(input_dtypes, name) -> int:
    try:
        return input_dtypes[name]
    except KeyError:
        raise invalid_argument(
            f"input '{name}' is not in the signature; its inputs are: {', '.join(sorted(input_dtypes))}"
        ) from None


def to_array(value, dtype_enum: int, name: str) -> np.ndarray:
    """Convert a nested JSON list (or scalar) into an array of the signature's dtype."""
    if dtype_enum == DataType.DT_STRING:
        return _string_array(value, name)
    _nested_shape(value, name)  # its rank is checked before numpy walks it
    try:
        raw = np.asarray(value)
    except ValueError as exc:
        raise invalid_argument(f"input '{name}': {_ragged_message(exc)}") from None
    return _typed(raw, dtype_enum, name)


def _typed(raw: np.ndarray, dtype_enum: int, name: str) -> np.ndarray:
    """The array of JSON values in the signature's dtype, if they are values of that kind."""
    dt = dtypes.from_enum(dtype_enum)
    if raw.dtype == object or raw.dtype.kind in "USV":
        raise invalid_argument(f"input '{name}': expects {dt.name} values, got non-numeric JSON values")
    target = dt.numpy
    kind = raw.dtype.kind
    if raw.size == 0:
        return raw.astype(target)
    if target.kind == "b":
        ok = kind == "b"
    elif target.kind in _INT_KINDS:
        ok = kind in _INT_KINDS
        if ok:
            info = np.iinfo(target)
            ok_range = info.min <= raw.min() and raw.max() <= info.max
            if not ok_range:
                raise invalid_argument(f"input '{name}': a value is out of range for {dt.name}")
    elif target.kind in "fc" or target in _JSON_FLOAT:
        ok = kind in _NUMBER_KINDS
    else:
        ok = False
    if not ok:
        got = {"b": "booleans", "f": "floating-point numbers", "i": "integers", "u": "integers"}.get(kind, kind)
        raise invalid_argument(f"input '{name}': expects {dt.name} values, got {got}")
    return raw.astype(target, copy=False)


def _nested_shape(value, name: str) -> list[int]:
    """The shape a nested list states along its first elements (of at most MAX_RANK dimensions)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        check_rank(len(shape), name)
        if not value:
            break
        value = value[0]
    return shape


def _string_array(value, name: str) -> np.ndarray:
    """Strings (UTF-8) or {"b64": ...} values, nested into a rectangular tensor."""
    shape = _nested_shape(value, name)
    flat = []

    def walk(v, level: int) -> None:
        if level < len(shape):
            if not isinstance(v, list) or len(v) != shape[level]:
                raise invalid_argument(f"input '{name}': values do not form a tensor (every row must have the same shape)")
            for item in v:
                walk(item, level + 1)
        elif isinstance(v, str):
            try:
                flat.append(v.encode())
            except UnicodeEncodeError:
                raise invalid_argument(f"input '{name}': a string is not valid Unicode (a lone surrogate)") from None
        elif _is_b64(v):
            try:
                flat.append(base64.b64decode(v["b64"], validate=True))
            except (ValueError, TypeError):
                raise invalid_argument(f"input '{name}': invalid base64 in {{\"b64\": ...}} value") from None
        elif isinstance(v, list):
            raise invalid_argument(f"input '{name}': values do not form a tensor (every row must have the same shape)")
        else:
            raise invalid_argument(f"input '{name}': expects DT_STRING values (strings or {{\"b64\": ...}}), got {type(v).__name__}")

    walk(value, 0)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)


def _ragged_message(exc: Exception) -> str:
    return f"values do not form a tensor (every row must have the same shape): {exc}"


# ---------------------------------------------------------------- response encoding


def encode_response(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    if row_format:
        batch = _common_batch_size(outputs)
    ready = {name: _json_ready(name, array) for name, array in outputs.items()}
    if not row_format:
        body = next(iter(ready.values())) if len(ready) == 1 else ready
        return _dumps_outputs({"outputs": body}, outputs)
    if len(ready) == 1:
        return _dumps_outputs({"predictions": next(iter(ready.values()))}, outputs)
    rows = [{name: value[i] for name, value in ready.items()} for i in range(batch)]
    return _dumps_outputs({"predictions": rows}, outputs)


def _common_batch_size(outputs: dict[str, np.ndarray]) -> int:
    """Row format needs every output to share dim 0, as TF Serving checks."""
    batch: int | None = None
    for name, array in outputs.items():
        if array.ndim == 0:
            raise invalid_argument(
                f"Tensor name: {name} has no shape information; use the columnar format ('inputs') for scalar outputs"
            )
        if batch is not None and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    return batch or 0  # no outputs: no rows


def _json_ready(name: str, array: np.ndarray):
    """numpy arrays orjson can write as they are; strings and odd floats as lists."""
    if array.dtype == object or array.dtype.kind == "S":
        as_b64 = name.endswith("_bytes")
        flat = [_string_value(v, as_b64) for v in array.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape).tolist()
    if array.dtype.kind == "c":
        raise invalid_argument(f"output '{name}': complex tensors cannot be written as JSON")
    if array.dtype in _JSON_FLOAT:
        array = array.astype(np.float32)
    if array.ndim == 0:
        return array.item()  # orjson would write a 0-d array as a list
    return np.ascontiguousarray(array)


def _string_value(value: bytes, as_b64: bool):
    if isinstance(value, str):
        value = value.encode()
    if not as_b64:
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass  # not text: b64 is the only faithful JSON form
    return {"b64": base64.b64encode(value).decode()}


def _plain(document):
    if isinstance(document, np.ndarray):
        return document.tolist()
    if isinstance(document, np.generic):
        return document.item()
    if isinstance(document, dict):
        return {k: _plain(v) for k, v in document.items()}
    if isinstance(document, list):
        return [_plain(v) for v in document]
    return document
