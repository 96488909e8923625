"""Hostile and valid-looking requests for every surface fastserve serves, for hypothesis.

tests/test_fuzz.py (CI: derandomized, 1,000 examples a surface) and bench/fuzz.py (the soak:
random seeds, 10,000) share this module: the models a fuzzed server serves (`write_models`),
one `Surface` per kind of input (a strategy, the sender that puts one example on the wire and
says what came back, and the inputs once answered badly: `REGRESSIONS`), the property every
answer keeps (`Outcome.bad`), and the measurements around a run (`run_surface`: the latencies
of a probe process, tests/fuzz_probe.py; the server's RSS).

What counts as bad: a REST status of 500 or above other than 501 (UNIMPLEMENTED); a gRPC
status INTERNAL, UNKNOWN, DATA_LOSS or UNAVAILABLE (a TensorFlow error reaches the client with
its own canonical code, so a model's INVALID_ARGUMENT or FAILED_PRECONDITION is fine); no
answer within TIMEOUT (a hang). HTTP/2 requests that break gRPC's framing or headers are
answered by libgrpc itself before fastserve sees a call (UNKNOWN "Bad :te header", INTERNAL
"Error parsing ':method' metadata", ...); those answers (`LIBRARY_ANSWERS`) are counted apart,
not as bad.
"""
import base64
import json
import math
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import grpc
import hpack
import numpy as np
from hyperframe import frame as h2frame
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    predict_pb2,
    regression_pb2,
)

from fastserve.codec import tensor_proto
from fastserve_client import dtypes, protos
from tests.conftest import EXAMPLE_MODELS
from tests.fuzz_probe import TIMEOUT, RestClient
from tests.test_e2e_hostile_input import export_echo

V2 = protos.inference()
ADMIN_TOKEN = "fuzz-admin-token"  # never sent: the admin surface (reloads, unload) answers 401 to the fuzzer

# ---------------------------------------------------------------- the models a fuzzed server serves

F32, I64, STR, BOOL = "DT_FLOAT", "DT_INT64", "DT_STRING", "DT_BOOL"
# model -> signature -> input -> (dtype, shape: -1 any size, None unknown rank)
SIGNATURES = {
    "half_plus_two": {"serving_default": {"x": (F32, (-1, 1))}},
    "multi_io": {"serving_default": {"a": (F32, (-1, 2)), "b": (I64, (-1,)), "tag": (STR, (-1,))}},
    "bool_mask": {"serving_default": {"flag": (BOOL, (-1,)), "x": (F32, (-1,))}},
    "example_scorer": {
        "serving_default": {"x": (F32, (-1, 1))},
        "classify_x_to_y": {"inputs": (STR, (-1,))},
        "regress_x_to_y": {"inputs": (STR, (-1,))},
    },
    "echo": {"serving_default": {"s": (STR, None)}, "floats": {"x": (F32, None)}},
}
SIGNATURES["batched_half_plus_two"] = SIGNATURES["half_plus_two"]
SIGNATURES["batched_multi_io"] = SIGNATURES["multi_io"]
OUTPUTS = {
    "half_plus_two": ["y"], "multi_io": ["sum", "b_doubled", "tag_bytes", "tag_upper"], "bool_mask": ["masked", "flag_not"],
    "example_scorer": ["y", "classes", "scores", "outputs"], "echo": ["n"],
}
OUTPUTS["batched_half_plus_two"], OUTPUTS["batched_multi_io"] = OUTPUTS["half_plus_two"], OUTPUTS["multi_io"]
MODELS = sorted(SIGNATURES)
BATCHING = "{max_batch_size: 8, batch_timeout_micros: 1000}"


def write_models(root: Path) -> list[str]:
    """Export echo, write models.yaml and the admin token under root; the server's arguments
    (without --grpc_transport)."""
    export_echo(root / "echo" / "1")
    paths = {name: EXAMPLE_MODELS / name for name in ("half_plus_two", "multi_io", "bool_mask", "example_scorer")}
    paths["echo"] = root / "echo"
    lines = [f"  - {{name: {name}, base_path: {path}}}" for name, path in paths.items()]
    for name in ("half_plus_two", "multi_io"):
        lines.append(f"  - {{name: batched_{name}, base_path: {paths[name]}, batching: {BATCHING}}}")
    (root / "models.yaml").write_text("models:\n" + "\n".join(lines) + "\n")
    (root / "admin_token").write_text(ADMIN_TOKEN + "\n")
    return [f"--config={root / 'models.yaml'}", f"--admin_token_file={root / 'admin_token'}"]


# ---------------------------------------------------------------- what came back

BAD_GRPC = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE"}
# libgrpc's own answers to HTTP/2 requests that break gRPC's framing or metadata (no call reaches fastserve)
LIBRARY_ANSWERS = re.compile(
    r"Compression bit set but no encoding configured|Decompression failed|Error parsing '.*' metadata|"
    r"(Bad|Missing) :?\w+ header|Illegal header (key|value)|Failed parsing HTTP/2|Invalid compression algorithm|"
    r"Unexpected compression|Received message larger than max|Message too large"
)


@dataclass
class Outcome:
    status: str  # "200", "INVALID_ARGUMENT", "closed", "reset", "timeout", ... (counted per surface)
    bad: str = ""  # why this answer breaks the property ("" when it keeps it)
    library: bool = False  # answered by libgrpc for broken framing, not by fastserve


def http_outcome(statuses: list[int], body: bytes = b"") -> Outcome:
    """501 is UNIMPLEMENTED, not a failure: fastserve's answer to what it does not do, and TensorFlow's
    for what a kernel does not support (broadcasting over 30 dimensions), as over gRPC."""
    bad = [s for s in statuses if not (100 <= s < 500 or s == 501)]
    return Outcome(",".join(map(str, statuses)) or "closed", f"HTTP status {bad}: {body[:300]!r}" if bad else "")


def grpc_outcome(code: str, message: str) -> Outcome:
    if code in BAD_GRPC:
        if LIBRARY_ANSWERS.search(message):
            return Outcome(f"{code} (libgrpc)", library=True)
        return Outcome(code, f"{code}: {message[:300]}")
    return Outcome(code)


# ---------------------------------------------------------------- clients


class Target:
    """A running server as the fuzzer and the probes reach it."""

    def __init__(self, server, transport: str):
        self.server = server
        self.transport = transport
        self.rest = RestClient(server.rest_port)
        self.channel = grpc.insecure_channel(server.grpc_target, options=[("grpc.max_receive_message_length", -1)])
        self._stubs: dict[str, object] = {}
        self.prober = Prober(server)

    def grpc(self, method: str, payload: bytes, metadata=()) -> Outcome:
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._stubs[method] = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            stub(payload, timeout=TIMEOUT, metadata=metadata or None)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # the client's own TIMEOUT
                return Outcome("timeout", f"no answer in {TIMEOUT}s")
            return grpc_outcome(exc.code().name, exc.details() or "")
        return Outcome("OK")

    def close(self) -> None:
        self.rest.close()
        self.channel.close()
        self.prober.close()


# ---------------------------------------------------------------- JSON text, hostile included


def mostly(usual, *rare, weight: int = 4):
    """usual, `weight` times as often as each rare alternative: most examples stay valid-looking
    in most places, so that they reach the deeper steps (decoding, the model, batching). (one_of
    would count a repeated strategy once; sampled_from picks evenly.)"""
    return st.sampled_from([usual] * weight + list(rare)).flatmap(lambda strategy: strategy)


def rarely(draw, n: int) -> bool:
    """True about once in n draws (and False when hypothesis shrinks: the usual case is the simpler one)."""
    return draw(st.sampled_from(range(n))) == n - 1


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is: NaN, 1e400, deep nesting, invalid tokens."""
    text: str


def dump(value, ascii_only: bool = True) -> str:
    """JSON text of value (dicts, lists, Raw, scalars); strings may hold lone surrogates."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump(str(k), ascii_only)}:{dump(v, ascii_only)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value, ensure_ascii=ascii_only)


def to_body(value, ascii_only: bool = True) -> bytes:
    return dump(value, ascii_only).encode("utf-8", "surrogatepass")  # a lone surrogate: bytes no UTF-8 decoder takes


NUMBER_TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "0.0", "1E+2", "1e5", "123456789012345678901234567890",
                 "-9223372036854775809", "9223372036854775808", "18446744073709551616", "4.9e-324", "3.4028236e38",
                 "1.7976931348623157e308", "00", "01", "1.", ".5", "+1", "1e", "0x10", "nan", "inf", "1_0", "- 1", "1.5e+"]
DEPTHS = [31, 32, 33, 100, 255, 256, 1000, 1025, 5000]
json_ints = st.one_of(st.integers(-3, 3), st.integers(), st.sampled_from([2**31, -(2**31) - 1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, 10**30]))
json_floats = st.one_of(st.floats(width=32), st.floats(), st.sampled_from([3.4e38, 3.5e38, 1e308, 5e-324]))
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # lone surrogates too
b64_values = st.one_of(
    st.binary(max_size=12).map(lambda b: {"b64": base64.b64encode(b).decode()}),
    st.fixed_dictionaries({"b64": st.one_of(any_text, json_ints, st.none())}),
)
json_leaves = st.one_of(
    st.none(), st.booleans(), json_ints, json_floats, any_text, b64_values,
    st.sampled_from(NUMBER_TOKENS).map(Raw),
    st.tuples(st.sampled_from(DEPTHS), st.sampled_from(["1", '"s"', "", "{}"])).map(lambda d: Raw("[" * d[0] + d[1] + "]" * d[0])),
)
json_values = st.recursive(
    json_leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=3), max_leaves=10
)
signature_names = st.one_of(st.sampled_from(["", "serving_default", "floats", "classify_x_to_y", "regress_x_to_y", "nope"]), any_text)
text_or_json = st.one_of(signature_names, json_values)


# ---------------------------------------------------------------- valid-looking tensors

NUMPY = {F32: np.float32, I64: np.int64, STR: object, BOOL: np.bool_}
ELEMENTS = {
    F32: st.floats(width=32, allow_nan=False, allow_infinity=False),
    I64: st.integers(-(2**63), 2**63 - 1),
    STR: st.binary(max_size=6),
    BOOL: st.booleans(),
}


@st.composite
def valid_arrays(draw, inputs: dict) -> dict[str, np.ndarray]:
    """Arrays for a signature's inputs: its dtypes, one batch size, unknown dims 1-3."""
    batch = draw(st.integers(1, 3))
    arrays = {}
    for name, (dtype, shape) in inputs.items():
        if shape is None:
            shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        else:
            shape = tuple(batch if i == 0 else (draw(st.integers(1, 3)) if d == -1 else d) for i, d in enumerate(shape))
        values = draw(st.lists(ELEMENTS[dtype], min_size=math.prod(shape), max_size=math.prod(shape)))
        array = np.empty(len(values), dtype=NUMPY[dtype])
        array[:] = values
        arrays[name] = array.reshape(shape)
    return arrays


@st.composite
def model_and_signature(draw, include_examples: bool = False) -> tuple[str, str, dict]:
    model = draw(st.sampled_from(MODELS))
    signatures = {k: v for k, v in SIGNATURES[model].items() if include_examples or k.startswith(("serving", "floats"))}
    signature = draw(st.sampled_from(sorted(signatures)))
    return model, signature, signatures[signature]


model_names = st.one_of(st.sampled_from(MODELS), st.sampled_from(["", "nope", "m" * 2000, "half_plus_two/", "HALF_PLUS_TWO"]), any_text)


def json_tensor_value(array: np.ndarray):
    """An array as TF Serving's REST JSON writes it (strings as text, or b64 when not UTF-8)."""
    if array.dtype != object:
        return array.tolist()

    def one(v: bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(v).decode()}

    flat = [one(v) for v in array.reshape(-1)]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape).tolist()


@st.composite
def mutated(draw, value):
    """value as it is, most often; else with one part replaced by any JSON."""
    if not rarely(draw, 4) or not isinstance(value, (list, dict)) or not value:
        return value
    if isinstance(value, list):
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + [draw(st.one_of(json_values, mutated(value[i])))] + value[i + 1:]
    key = draw(st.sampled_from(sorted(value)))
    return {**value, key: draw(st.one_of(json_values, mutated(value[key])))}


# ---------------------------------------------------------------- REST: requests over a kept-alive connection


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: bytes
    body: bytes = b""
    headers: tuple = ()


def send_http(target: Target, request: HttpRequest) -> Outcome:
    try:
        status, _, body = target.rest.request(request.method, request.target, request.body, request.headers)
    except TimeoutError:
        target.rest.close()
        return Outcome("timeout", f"no answer in {TIMEOUT}s")
    except (ConnectionError, EOFError) as exc:
        return Outcome("closed", f"connection closed without an answer: {exc}")
    if status == 503 and body.endswith(b'"ready":false}'):
        return Outcome("503 not ready")  # the documented answer of a readiness check (V2's spec would say 4xx)
    return http_outcome([status], body)


@st.composite
def path_segment(draw, text) -> bytes:
    """A path segment percent-encoded (most often), or as raw UTF-8 bytes (surrogates too)."""
    if not rarely(draw, 6):
        return quote(text, safe="", errors="surrogatepass").encode()
    return text.encode("utf-8", "surrogatepass").replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"").replace(b"?", b"%3F").replace(b"#", b"%23")


version_choices = mostly(
    st.sampled_from(["", "/versions/1"]),
    st.sampled_from(["/versions/1", "/versions/0", "/versions/2", "/versions/99999999999999999999", "/versions/" + "9" * 5000,
                     "/versions/-1", "/versions/1.0", "/versions/", "/labels/stable", "/labels/", "/labels/%FF%FE", "/versions/%C2%B2"]),
    any_text.map(lambda t: "/labels/" + quote(t, safe="", errors="surrogatepass")),
)


@st.composite
def model_path(draw, prefix: str, model: str) -> bytes:
    name = draw(mostly(st.just(model), model_names, weight=8))
    return prefix.encode() + draw(path_segment(name)) + draw(version_choices).encode()


@st.composite
def number_array_text(draw) -> str:
    """Nested JSON arrays of number tokens as a client may format them (the native numeric parser's input)."""
    shape = draw(st.one_of(st.lists(st.integers(0, 3), max_size=4), st.integers(30, 36).map(lambda r: [1] * r)))
    space = draw(st.sampled_from(["", " ", "\n  ", "\t", " \r\n"]))
    leaves = st.one_of(
        st.integers(-(2**70), 2**70).map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.floats(width=32).map(lambda f: f"{f:e}"), st.sampled_from(NUMBER_TOKENS + ["true", "null", '"1"', "[]", "{}"]),
    )

    def fill(level: int) -> str:
        if level == len(shape):
            return draw(leaves) if rarely(draw, 10) else draw(st.integers(-9, 9).map(str) | st.floats(-1e6, 1e6).map(repr))
        items = [fill(level + 1) for _ in range(shape[level] - (rarely(draw, 21)))]  # sometimes ragged
        return "[" + space + ("," + space).join(items) + space + "]"

    return fill(0)


@st.composite
def numeric_body(draw) -> bytes:
    array = draw(number_array_text())
    key = draw(st.sampled_from(['"instances"', '"inputs"', '"inputs": {"x"', '"inputs": {"a"', '"inputs": {"s"', '"instances "']))
    body = "{" + key + ": " + array + ("}" if "{" in key else "")
    signature = draw(st.sampled_from(["", ', "signature_name": "floats"', ', "signature_name": "serving_default"', ', "signature_name": 5',
                                      ', "signature_name": "\\udcff"', ', "instances": [[1.0]]']))
    tail = draw(st.sampled_from(["}", "}", " } ", "}}", "", "},", "} x"]))
    return (body + signature + tail).encode()


@st.composite
def predict_document(draw, inputs: dict):
    """A :predict body for a signature's inputs (row or columnar), perhaps spoiled in one place."""
    arrays = {name: json_tensor_value(a) for name, a in draw(valid_arrays(inputs)).items()}
    if draw(st.booleans()):  # row format
        if len(arrays) == 1 and draw(st.booleans()):
            doc = {"instances": next(iter(arrays.values()))}
        else:
            batch = min(len(v) if isinstance(v, list) else 0 for v in arrays.values())
            doc = {"instances": [{name: value[i] for name, value in arrays.items()} for i in range(batch)]}
    elif len(arrays) == 1 and draw(st.booleans()):
        doc = {"inputs": next(iter(arrays.values()))}
    else:
        doc = {"inputs": arrays}
    if rarely(draw, 5):
        doc["signature_name"] = draw(text_or_json)
    return draw(mutated(doc))


@st.composite
def v1_predict(draw) -> HttpRequest:
    model, signature, inputs = draw(model_and_signature())
    path = draw(model_path("/v1/models/", model)) + draw(mostly(st.just(b":predict"), st.sampled_from([b":PREDICT", b":predict/", b":infer"])))
    kind = draw(st.sampled_from(["tensors"] * 5 + ["numbers"] * 2 + ["json", "bytes"]))
    if kind == "tensors":
        doc = draw(predict_document(inputs))
        if signature != "serving_default" and isinstance(doc, dict):
            doc["signature_name"] = signature
        body = to_body(doc, draw(st.booleans()))
    elif kind == "numbers":
        body = draw(numeric_body())
    elif kind == "json":
        body = to_body(draw(st.one_of(json_values, st.dictionaries(st.sampled_from(["instances", "inputs", "signature_name"]), json_values))))
    else:
        body = draw(st.binary(max_size=64))
    return HttpRequest("POST", path, body)


feature_values = st.one_of(json_leaves, st.lists(json_leaves, max_size=4), st.lists(st.floats(width=32, allow_nan=False), max_size=3),
                           st.lists(st.integers(-(2**64), 2**64), max_size=3), st.lists(any_text, max_size=3))
example_features = mostly(
    st.fixed_dictionaries({"x": st.one_of(st.floats(-1e3, 1e3), st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=2))},
                          optional={"bias": st.floats(-1e3, 1e3)}),
    st.dictionaries(st.one_of(st.sampled_from(["x", "bias"]), any_text), feature_values, max_size=3),
    json_values,
)


@st.composite
def v1_examples(draw) -> HttpRequest:
    verb = draw(st.sampled_from(["classify", "regress"]))
    path = draw(model_path("/v1/models/", "example_scorer")) + b":" + draw(mostly(st.just(verb), st.just(verb.upper()))).encode()
    doc = {"signature_name": draw(mostly(st.just(f"{verb}_x_to_y"), text_or_json)),
           "examples": draw(mostly(st.lists(example_features, max_size=4), json_values))}
    if rarely(draw, 3):
        doc["context"] = draw(example_features)
    if rarely(draw, 10):
        del doc[draw(st.sampled_from(sorted(doc)))]
    return HttpRequest("POST", path, to_body(draw(mutated(doc)), draw(st.booleans())))


@st.composite
def rest_get(draw) -> HttpRequest:
    model = draw(st.sampled_from(MODELS))
    kind = draw(st.sampled_from(["v1", "v1", "v2", "v2", "other"]))
    if kind == "v1":
        path = b"/v1/models" + (b"" if rarely(draw, 10) else draw(model_path("/", model)))
        path += draw(st.sampled_from([b"", b"", b"/metadata", b"/METADATA", b"/metadata/", b"/x"]))
    elif kind == "v2":
        path = draw(st.sampled_from([b"/v2", b"/v2/", b"/v2/health/live", b"/v2/health/ready", b"/v2/health/x"]))
        if draw(st.booleans()):
            name = draw(path_segment(draw(st.one_of(st.just(model), model_names))))
            version = b"" if draw(st.booleans()) else b"/versions/" + draw(path_segment(draw(st.one_of(st.sampled_from(["1", "0", "-1", "9" * 30, "²"]), any_text))))
            path = b"/v2/models/" + name + version + draw(st.sampled_from([b"", b"/ready", b"/infer", b"/x"]))
    else:
        path = draw(st.sampled_from([b"/", b"//", b"/metrics", b"/monitoring/prometheus/metrics", b"/v1", b"/v3/models", b"/v1/models/../../etc/passwd",
                                     b"/v2/repository/index", b"/v2/repository/models/half_plus_two/unload", b"/%00", b"/v1/models/%"]))
        path += draw(path_segment(draw(any_text)))
    if rarely(draw, 5):
        path += b"?" + draw(path_segment(draw(any_text)))
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "DELETE", "OPTIONS", "PUT"]))
    return HttpRequest(method, path, draw(st.one_of(st.just(b""), st.binary(max_size=16))) if method != "GET" else b"")


V2_DATATYPES = sorted(dtypes.BY_V2)
shape_lists = st.lists(st.one_of(st.integers(-2, 4), st.sampled_from([2**31, 2**40, 2**63 - 1, -(2**63), 2**64, 10**30])), max_size=5)
hostile_shapes = st.one_of(shape_lists, st.integers(30, 40).map(lambda r: [1] * r), json_values)


def v2_datatype(array: np.ndarray) -> str:
    return dtypes.from_numpy(array.dtype).v2


def raw_bytes(array: np.ndarray) -> bytes:
    """The binary extension's form: little-endian values, or each BYTES element after its 4-byte length."""
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return np.ascontiguousarray(array).tobytes()


@st.composite
def v2_json_tensor(draw, name: str, array: np.ndarray) -> dict:
    data = [v.decode("utf-8", "replace") for v in array.reshape(-1)] if array.dtype == object else array.reshape(-1).tolist()
    tensor = {"name": name, "datatype": v2_datatype(array), "shape": list(array.shape),
              "data": data if draw(st.booleans()) else json_tensor_value(array)}
    if rarely(draw, 6):
        spoil = draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters", "drop"]))
        if spoil == "drop":
            del tensor[draw(st.sampled_from(sorted(tensor)))]
        else:
            tensor[spoil] = draw({"name": text_or_json, "datatype": st.one_of(st.sampled_from(V2_DATATYPES), text_or_json),
                                  "shape": hostile_shapes, "data": json_values,
                                  "parameters": st.one_of(json_values, st.fixed_dictionaries({"binary_data_size": json_values}))}[spoil])
    return tensor


@st.composite
def v2_document(draw, model: str, signature: str, arrays: dict, tensors: list) -> dict:
    doc = {"inputs": tensors}
    if rarely(draw, 4):
        doc["outputs"] = [{"name": draw(mostly(st.sampled_from(OUTPUTS[model]), any_text)),
                           "parameters": {"binary_data": draw(st.booleans())}} for _ in range(draw(st.integers(0, 2)))]
    parameters = {"signature_name": signature} if signature != "serving_default" else {}
    if rarely(draw, 4):
        parameters[draw(st.sampled_from(["signature_name", "binary_data_output", "x"]))] = draw(text_or_json)
    if parameters:
        doc["parameters"] = parameters
    if rarely(draw, 4):
        doc["id"] = draw(text_or_json)
    return draw(mutated(doc))


def v2_path(draw, model: str) -> bytes:
    name = draw(path_segment(draw(mostly(st.just(model), model_names, weight=8))))
    version = draw(mostly(st.sampled_from([b"", b"/versions/1"]), st.sampled_from([b"/versions/0", b"/versions/%C2%B2", b"/versions/" + b"9" * 30]),
                          any_text.map(lambda t: b"/versions/" + quote(t, safe="", errors="surrogatepass").encode())))
    return b"/v2/models/" + name + version + draw(mostly(st.just(b"/infer"), st.sampled_from([b"/infer/", b"/INFER"])))


@st.composite
def v2_infer_json(draw) -> HttpRequest:
    model, signature, inputs = draw(model_and_signature())
    arrays = draw(valid_arrays(inputs))
    tensors = [draw(v2_json_tensor(name, array)) for name, array in arrays.items()]
    if rarely(draw, 10):
        tensors = draw(st.one_of(json_values, st.lists(json_values, max_size=2)))
    doc = draw(v2_document(model, signature, arrays, tensors))
    return HttpRequest("POST", v2_path(draw, model), to_body(doc, draw(st.booleans())))


@st.composite
def v2_infer_binary(draw) -> HttpRequest:
    model, signature, inputs = draw(model_and_signature())
    arrays = draw(valid_arrays(inputs))
    tensors, chunks = [], []
    for name, array in arrays.items():
        if rarely(draw, 4):
            tensors.append(draw(v2_json_tensor(name, array)))
            continue
        raw = raw_bytes(array)
        size = draw(mostly(st.just(len(raw)), st.integers(-2, len(raw) + 4), json_values))
        tensors.append({"name": name, "datatype": v2_datatype(array), "shape": list(array.shape), "parameters": {"binary_data_size": size}})
        chunks.append(raw)
    header = to_body(draw(v2_document(model, signature, arrays, tensors)))
    binary = b"".join(chunks)
    cut = draw(st.sampled_from(["none"] * 6 + ["short", "extra"]))
    if cut == "short" and binary:
        binary = binary[: draw(st.integers(0, len(binary) - 1))]
    elif cut == "extra":
        binary += draw(st.binary(min_size=1, max_size=8))
    length = draw(mostly(
        st.just(str(len(header))), st.integers(-1, len(header) + len(binary) + 2).map(str),
        st.sampled_from(["", " ", "abc", "1e3", "0x10", "\u0663", "+5", "9" * 40, str(len(header)) + " ", " " + str(len(header))]),
    ))
    headers = ((b"Content-Type", draw(st.sampled_from([b"application/octet-stream", b"application/json", b"text/plain"]))),)
    if not rarely(draw, 10):
        headers += ((b"Inference-Header-Content-Length", length.encode()),)
    return HttpRequest("POST", v2_path(draw, model), header + binary, headers)


# ---------------------------------------------------------------- gRPC: messages, and bytes that are none


@dataclass(frozen=True)
class GrpcCall:
    method: str
    payload: bytes
    metadata: tuple = ()


def send_grpc(target: Target, call: GrpcCall) -> Outcome:
    return target.grpc(call.method, call.payload, call.metadata)


PREDICTION = "/tensorflow.serving.PredictionService/"
INFERENCE = "/inference.GRPCInferenceService/"
METHODS = [PREDICTION + m for m in ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")] + [
    "/tensorflow.serving.ModelService/GetModelStatus", "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    "/grpc.health.v1.Health/Check",
] + [INFERENCE + m for m in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                             "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")]
proto_text = st.text(max_size=12)  # protobuf strings are UTF-8 (the raw-bytes surface sends the rest)
proto_signatures = st.one_of(st.sampled_from(["", "serving_default", "floats", "classify_x_to_y", "regress_x_to_y", "nope"]), proto_text)
proto_names = st.one_of(st.sampled_from(MODELS), st.sampled_from(["", "nope", "m" * 10_000]), proto_text)
int64s = st.integers(-(2**63), 2**63 - 1)
int32s = st.integers(-(2**31), 2**31 - 1)
DTYPE_ENUMS = st.one_of(st.sampled_from(sorted(dtypes.BY_ENUM)), st.integers(-2, 30), st.integers(100, 124), int32s)
dim_sizes = st.one_of(st.integers(0, 3), st.integers(-3, 8), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]))
TYPED_VALUES = {
    "float_val": st.floats(width=32), "double_val": st.floats(), "int_val": int32s, "int64_val": int64s,
    "uint32_val": st.integers(0, 2**32 - 1), "uint64_val": st.integers(0, 2**64 - 1), "bool_val": st.booleans(),
    "string_val": st.binary(max_size=8), "half_val": int32s, "scomplex_val": st.floats(width=32), "dcomplex_val": st.floats(),
}


def fill_spec(draw, spec, model: str, signature: str) -> None:
    spec.name = draw(mostly(st.just(model), proto_names, weight=8))
    choice = draw(st.sampled_from(["latest"] * 4 + ["version", "version", "label"]))
    if choice == "version":
        spec.version.value = draw(mostly(st.just(1), int64s, weight=2))
    elif choice == "label":
        spec.version_label = draw(st.one_of(st.sampled_from(["stable", ""]), proto_text))
    spec.signature_name = draw(mostly(st.sampled_from([signature if signature != "serving_default" else "", signature]), proto_signatures))


def valid_proto(draw, array: np.ndarray) -> tensor_pb2.TensorProto:
    """The array as a TensorProto: packed content, or typed values (perhaps fewer: implied)."""
    proto = tensor_proto.from_numpy(array, tensor_pb2.TensorProto())
    if array.dtype != object and draw(st.booleans()):
        proto.ClearField("tensor_content")
        values = getattr(proto, dtypes.from_numpy(array.dtype).proto_field)
        values.extend(array.reshape(-1)[: draw(st.integers(0, array.size))].tolist())
    return proto


@st.composite
def hostile_tensor(draw, proto: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """A TensorProto with one to three parts replaced: dtype (invalid enums too), dims (negative,
    huge, many), tensor_content of any size, typed values of any kind and count."""
    proto = tensor_pb2.TensorProto.FromString(proto.SerializeToString()) if proto is not None else tensor_pb2.TensorProto()
    for edit in draw(st.lists(st.sampled_from(["dtype", "dims", "rank", "content", "values", "values", "clear"]), min_size=1, max_size=3)):
        if edit == "dtype":
            proto.dtype = draw(DTYPE_ENUMS)
        elif edit in ("dims", "rank"):
            del proto.tensor_shape.dim[:]
            sizes = draw(st.lists(dim_sizes, max_size=6)) if edit == "dims" else [1] * draw(st.integers(30, 40))
            for size in sizes:
                proto.tensor_shape.dim.add(size=size, name=draw(st.sampled_from(["", "d"])))
            proto.tensor_shape.unknown_rank = rarely(draw, 10)
        elif edit == "content":
            proto.tensor_content = draw(st.binary(max_size=64))
        elif edit == "values":
            name = draw(st.sampled_from(sorted(TYPED_VALUES)))
            getattr(proto, name).extend(draw(st.lists(TYPED_VALUES[name], max_size=10)))
        else:
            proto.ClearField(draw(st.sampled_from(["tensor_content", "tensor_shape", *TYPED_VALUES])))
    return proto


@st.composite
def tensor_inputs(draw, inputs: dict, add) -> None:
    """The signature's inputs as TensorProtos into add(name) (a map's __getitem__), some hostile,
    some missing, perhaps one more under any name."""
    for name, array in draw(valid_arrays(inputs)).items():
        if rarely(draw, 13):
            continue
        proto = valid_proto(draw, array)
        add(name).CopyFrom(draw(hostile_tensor(proto)) if rarely(draw, 5) else proto)
    if rarely(draw, 13):
        add(draw(proto_text)).CopyFrom(draw(hostile_tensor()))


@st.composite
def tf_examples(draw, request_input: input_pb2.Input) -> None:
    with_context = draw(st.booleans())
    examples = request_input.example_list_with_context.examples if with_context else request_input.example_list.examples
    if with_context:
        fill_example(draw, request_input.example_list_with_context.context)
    for _ in range(draw(st.integers(0 if rarely(draw, 10) else 1, 3))):
        fill_example(draw, examples.add())


def fill_example(draw, example: example_pb2.Example) -> None:
    names = draw(st.one_of(st.just(["x"]), st.just(["x", "bias"]), st.lists(st.one_of(st.sampled_from(["x", "bias"]), proto_text), max_size=3)))
    for name in names:
        feature = example.features.feature[name]
        kind = draw(st.sampled_from(["float_list", "float_list", "int64_list", "bytes_list", "none"]))
        if kind == "float_list":
            feature.float_list.value.extend(draw(st.lists(st.floats(width=32), min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=3)))
        elif kind == "int64_list":
            feature.int64_list.value.extend(draw(st.lists(int64s, max_size=3)))
        elif kind == "bytes_list":
            feature.bytes_list.value.extend(draw(st.lists(st.binary(max_size=8), max_size=3)))


@st.composite
def tf_serving_call(draw) -> GrpcCall:
    """TF Serving's methods: Predict most often, then Classify, Regress, MultiInference, metadata and status."""
    method = draw(st.sampled_from(["Predict"] * 6 + ["Classify", "Regress", "MultiInference", "GetModelMetadata", "GetModelStatus"]))
    if method == "Predict":
        model, signature, inputs = draw(model_and_signature())
        request = predict_pb2.PredictRequest()
        fill_spec(draw, request.model_spec, model, signature)
        draw(tensor_inputs(inputs, request.inputs.__getitem__))
        if rarely(draw, 4):
            request.output_filter.extend(draw(st.lists(mostly(st.sampled_from(OUTPUTS[model]), proto_text), max_size=3)))
    elif method in ("Classify", "Regress", "MultiInference"):
        request = {"Classify": classification_pb2.ClassificationRequest, "Regress": regression_pb2.RegressionRequest,
                   "MultiInference": inference_pb2.MultiInferenceRequest}[method]()
        draw(tf_examples(request.input))
        specs = [request.model_spec] if method != "MultiInference" else [request.tasks.add() for _ in range(draw(st.integers(0, 3)))]
        for spec in specs:
            if method == "MultiInference":
                spec.method_name = draw(st.sampled_from(["tensorflow/serving/classify", "tensorflow/serving/regress", "tensorflow/serving/predict", "x"]))
                spec = spec.model_spec
            fill_spec(draw, spec, "example_scorer", draw(st.sampled_from(["classify_x_to_y", "regress_x_to_y", "serving_default"])))
    elif method == "GetModelMetadata":
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=draw(st.lists(st.one_of(st.just("signature_def"), proto_text), max_size=2)))
        fill_spec(draw, request.model_spec, draw(st.sampled_from(MODELS)), "")
    else:
        request = get_model_status_pb2.GetModelStatusRequest()
        if not rarely(draw, 10):
            fill_spec(draw, request.model_spec, draw(st.sampled_from(MODELS)), "")
    path = ("/tensorflow.serving.ModelService/" if method == "GetModelStatus" else PREDICTION) + method
    return GrpcCall(path, request.SerializeToString())


CONTENTS_VALUES = {
    "bool_contents": st.booleans(), "int_contents": int32s, "int64_contents": int64s, "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": st.floats(width=32), "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
CONTENTS_OF = {"BOOL": "bool_contents", "INT64": "int64_contents", "FP32": "fp32_contents", "BYTES": "bytes_contents"}
infer_parameters = st.dictionaries(
    st.one_of(st.sampled_from(["signature_name", "binary_data_output", "binary_data_size"]), proto_text),
    st.one_of(*(st.builds(lambda v, k=kind: V2.InferParameter(**{k: v}), values) for kind, values in (
        ("bool_param", st.booleans()), ("int64_param", int64s), ("string_param", proto_signatures),
        ("double_param", st.floats()), ("uint64_param", st.integers(0, 2**64 - 1))))),
    max_size=2,
)


@st.composite
def model_infer_call(draw) -> GrpcCall:
    """ModelInfer with typed contents or raw_input_contents (right, wrong or missing in count and
    size), any datatype and shape, parameters of every kind; now and then the other V2 methods."""
    model, signature, inputs = draw(model_and_signature())
    version = draw(mostly(st.sampled_from(["", "1"]), st.sampled_from(["0", "-1", "2", "²", "9" * 30, " 1", "01"]), proto_text))
    other = draw(st.sampled_from(["ModelInfer"] * 8 + ["ModelReady", "ModelMetadata", "ServerMetadata", "RepositoryModelUnload"]))
    if other != "ModelInfer":
        name = draw(mostly(st.just(model), proto_names))
        kind = {"ModelReady": V2.ModelReadyRequest, "ModelMetadata": V2.ModelMetadataRequest}.get(other)
        request = kind(name=name, version=version) if kind else V2.ServerMetadataRequest() if other == "ServerMetadata" else V2.RepositoryModelUnloadRequest(model_name=name)
        return GrpcCall(INFERENCE + other, request.SerializeToString())
    request = V2.ModelInferRequest(model_name=draw(mostly(st.just(model), proto_names, weight=8)), model_version=version,
                                   id=draw(proto_text))
    for key, value in draw(mostly(st.just({}), infer_parameters)).items():
        request.parameters[key].CopyFrom(value)
    if signature != "serving_default":
        request.parameters["signature_name"].string_param = signature
    raw = draw(st.booleans())
    for name, array in draw(valid_arrays(inputs)).items():
        datatype = v2_datatype(array)
        tensor = request.inputs.add(name=name if not rarely(draw, 10) else draw(proto_text),
                                    datatype=datatype if not rarely(draw, 6) else draw(st.one_of(st.sampled_from(V2_DATATYPES), proto_text)),
                                    shape=array.shape if not rarely(draw, 6) else draw(st.lists(st.one_of(dim_sizes, int64s), max_size=6)))
        for key, value in draw(mostly(st.just({}), infer_parameters)).items():
            tensor.parameters[key].CopyFrom(value)
        if raw:
            data = raw_bytes(array)
            if rarely(draw, 6):
                data = draw(st.one_of(st.binary(max_size=32), st.just(data[: len(data) // 2]), st.just(data + b"\x00")))
            request.raw_input_contents.append(data)
        else:
            getattr(tensor.contents, CONTENTS_OF[datatype]).extend(array.reshape(-1).tolist())
            if rarely(draw, 6):
                field_name = draw(st.sampled_from(sorted(CONTENTS_VALUES)))
                getattr(tensor.contents, field_name).extend(draw(st.lists(CONTENTS_VALUES[field_name], max_size=6)))
    if raw and rarely(draw, 10):
        request.raw_input_contents.append(draw(st.binary(max_size=8)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        output = request.outputs.add(name=draw(mostly(st.sampled_from(OUTPUTS[model]), proto_text)))
        for key, value in draw(mostly(st.just({}), infer_parameters)).items():
            output.parameters[key].CopyFrom(value)
    return GrpcCall(INFERENCE + "ModelInfer", request.SerializeToString())


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def nested_message(depth: int) -> bytes:
    """Field 1 (a message: model_spec, inputs, ...) holding itself `depth` times."""
    payload = b""
    for _ in range(depth):
        payload = b"\x0a" + varint(len(payload)) + payload
    return payload


WIRE_TRAPS = [
    b"\x0a\xff\xff\xff\xff\x0f\x0a", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", b"\x0b", b"\x0c", b"\x0f", b"\x0a\x03\x0a\x01\xff",
    b"\x12\x05\x0a\x01\xff\x12\x00", b"\x08" + b"\xff" * 11, b"\x0a\x02\x0a", b"\x00", b"\xff" * 4, nested_message(99), nested_message(101),
    nested_message(2000),
]


@st.composite
def raw_grpc_call(draw) -> GrpcCall:
    """Bytes that are not a valid request (or barely are) to every method, and to unknown ones."""
    method = draw(st.one_of(st.sampled_from(METHODS), st.sampled_from(["/x.Y/Z", "/tensorflow.serving.PredictionService/predict",
                                                                        "/inference.GRPCInferenceService/", "//", "/a"])))
    kind = draw(st.sampled_from(["bytes", "mutated", "mutated", "trap"]))
    if kind == "bytes":
        payload = draw(st.binary(max_size=200))
    elif kind == "trap":
        payload = draw(st.sampled_from(WIRE_TRAPS))
        payload = draw(st.sampled_from([payload, b"\x0a\x0e\x0a\x0chalf_plus_two" + payload]))
    else:
        valid = draw(st.one_of(tf_serving_call(), model_infer_call())).payload
        payload = bytearray(valid)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(payload)))
            edit = draw(st.sampled_from(["cut", "flip", "insert"]))
            if edit == "cut":
                del payload[at:]
            elif edit == "flip" and at < len(payload):
                payload[at] ^= draw(st.integers(1, 255))
            else:
                payload[at:at] = draw(st.binary(min_size=1, max_size=6))
        payload = bytes(payload)
    metadata = draw(st.sampled_from([(), (), (("authorization", "Bearer x"),), (("authorization", "Bearer " + ADMIN_TOKEN + "x"),),
                                     (("authorization", ""),), (("x-any", "1"),)]))
    return GrpcCall(method, payload, metadata)


# ---------------------------------------------------------------- raw HTTP/1.1 over a socket

SENTINEL = b"GET /v2/health/live HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class RawHttp:
    data: bytes
    complete: bool  # False: the last request is cut short (the client then half-closes)


def half_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server closed the connection already


def send_raw_http(target: Target, example: RawHttp) -> Outcome:
    """The bytes on a fresh connection (complete ones followed by a request that closes it);
    every response must be 1xx/2xx/4xx, and the connection must close within TIMEOUT."""
    received = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", target.server.rest_port), timeout=TIMEOUT) as sock:
            try:
                sock.sendall(example.data + (SENTINEL if example.complete else b""))
                if not example.complete:
                    half_close(sock)
                sock.settimeout(1.0 if example.complete else TIMEOUT)
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline:
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:  # the server waits for more of a request it read as longer: half-close
                        half_close(sock)
                        sock.settimeout(TIMEOUT)
                        continue
                    if not chunk:
                        break
                    received += chunk
                else:
                    return Outcome("timeout", f"the connection stayed open {TIMEOUT}s after the client half-closed")
            except ConnectionError:
                pass  # closed while we were still sending: a refusal
    except TimeoutError:
        return Outcome("timeout", f"no answer in {TIMEOUT}s")
    return http_outcome(response_statuses(bytes(received)))


def response_statuses(data: bytes) -> list[int]:
    statuses = []
    while data.startswith(b"HTTP/"):
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        statuses.append(int(lines[0].split()[1]))
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = rest[length:]
    return statuses


USUAL_HEADERS = [b"Host: x", b"Content-Type: application/json", b"Connection: close", b"Connection: keep-alive",
                 b"Expect: 100-continue", b"Authorization: Bearer x", b"Accept: */*"]
HOSTILE_HEADERS = [
    b"Connection: upgrade", b"Upgrade: h2c", b"Upgrade: websocket", b"HTTP2-Settings: AAMAAABkAAQAAP__", b"Expect: x",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: x", b"Transfer-Encoding: chunked, x",
    b"Content-Length: -1", b"Content-Length: 1e3", b"Content-Length: 99999999999999999999", b"Content-Length: 0x10",
    b"Content-Length: 1, 2", b"Content-Length:", b"Inference-Header-Content-Length: 2", b"Inference-Header-Content-Length: -5",
    b"Authorization: Bearer", b"authorization: Basic Zm9v", b"X-Nothing", b" folded: value", b"Bad Name: 1", b"\x00: \x00",
    b"Cookie: " + b"a" * 3000,
]
USUAL_TARGETS = [b"/v1/models/half_plus_two:predict", b"/v1/models/half_plus_two", b"/v1/models/batched_multi_io:predict",
                 b"/v2/models/half_plus_two/infer", b"/v2/health/ready", b"/v1/models/example_scorer:classify", b"/metrics"]
HOSTILE_TARGETS = [b"*", b"http://x/v1/models/half_plus_two:predict", b"", b"/v1/models/%", b"/\xff\xfe",
                   b"/v1/models/half_plus_two:predict?x=%", b"/" + b"a" * 3000, b"/v1/models/half_plus_two:predict#f", b"//v1//models"]
REST_BODIES = [b'{"instances": [[1.0]]}', b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}',
               b'{"examples": [{"x": 1.0}]}', b"", b"{", b"\xff\xfe"]


@st.composite
def raw_request(draw) -> tuple[bytes, bool]:
    """One HTTP/1.1 request as bytes, well-formed in most parts, malformed in some; and whether it is all there."""
    eol = draw(mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r"])))
    method = draw(mostly(st.sampled_from([b"GET", b"POST"]), st.sampled_from([b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
                                                                              b"CONNECT", b"PRI", b"get", b"G\x00T"]), st.binary(max_size=8)))
    target = draw(mostly(st.sampled_from(USUAL_TARGETS), st.sampled_from(HOSTILE_TARGETS), st.binary(max_size=24)))
    version = draw(mostly(st.just(b"HTTP/1.1"), st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/11", b"", b"HTTPS/1.1",
                                                                  b"HTTP/1.1 x"])))
    line = draw(mostly(st.just(method + b" " + target + b" " + version),
                       st.sampled_from([method + b"  " + target + b" " + version, method + b" " + target])))
    headers = draw(st.lists(mostly(st.sampled_from(USUAL_HEADERS), st.sampled_from(HOSTILE_HEADERS), st.binary(max_size=24)), max_size=4))
    body = draw(mostly(st.sampled_from(REST_BODIES), st.binary(max_size=64)))
    framing = draw(st.sampled_from(["length", "length", "chunked", "chunked-bad", "none", "wrong-length"]))
    complete = True
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "wrong-length":
        declared = draw(st.integers(0, len(body) + 16))
        headers.append(b"Content-Length: %d" % declared)
        complete = declared <= len(body)
    elif framing.startswith("chunked"):
        headers.append(b"Transfer-Encoding: chunked")
        if framing == "chunked":
            body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]) if part) + b"0\r\n\r\n"
        else:
            body = draw(st.sampled_from([b"zz\r\n", b"ffffffffffffffffff\r\nab", b"5\r\nab", b"5;x=y\r\nabcde\r\n0\r\n\r\n", b"-1\r\n",
                                         b"3\r\nabc\r\n", b"0\r\nTrailer: x\r\n\r\n"]))
            complete = body.endswith(b"\r\n\r\n") or body.startswith((b"zz", b"-1"))
    elif body:
        complete = method.upper() in (b"GET", b"HEAD", b"DELETE", b"OPTIONS") or draw(st.booleans())  # a body without a length is the next request
    data = eol.join([line, *headers]) + eol + eol + body
    return data, complete


@st.composite
def raw_http(draw) -> RawHttp:
    requests_ = draw(st.lists(raw_request(), min_size=1, max_size=3))
    data = b"".join(d for d, _ in requests_)
    complete = all(c for _, c in requests_)
    if rarely(draw, 10):  # cut anywhere
        data = data[: draw(st.integers(0, len(data)))]
        complete = False
    return RawHttp(data, complete)


# ---------------------------------------------------------------- raw HTTP/2 frames to the gRPC port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MISALIGNING = b"\x00\x00"  # not a whole frame: the frames after it are read from the wrong offset


@dataclass(frozen=True)
class H2Exchange:
    headers: tuple  # ((name, value) bytes pairs), sent as given: non-UTF-8 :path, no content-type, ...
    data: tuple = ()  # DATA frame payloads
    end_stream: bool = True  # False: the client sends no more and goes away (the server must cope)
    before: bytes = b""  # frames (or junk) sent before the HEADERS frame
    preface: bytes = PREFACE


def frame(kind: type, stream: int, flags=(), **fields) -> bytes:
    f = kind(stream, **fields)
    for flag in flags:
        f.flags.add(flag)
    return f.serialize()


def send_h2(target: Target, example: H2Exchange) -> Outcome:
    """One stream (id 1) on a fresh connection; its status: the trailers' grpc-status (or :status
    without one), or how the server ended it (reset, goaway, closed)."""
    encoder = hpack.Encoder()
    data = example.preface + frame(h2frame.SettingsFrame, 0) + example.before
    data += frame(h2frame.HeadersFrame, 1, ("END_HEADERS",) + (("END_STREAM",) if example.end_stream and not example.data else ()),
                  data=encoder.encode(list(example.headers)))
    for i, chunk in enumerate(example.data):
        last = example.end_stream and i == len(example.data) - 1
        data += frame(h2frame.DataFrame, 1, ("END_STREAM",) if last else (), data=chunk)
    try:
        with socket.create_connection(("127.0.0.1", target.server.grpc_port), timeout=TIMEOUT) as sock:
            try:
                sock.sendall(data)
            except ConnectionError:
                return Outcome("closed")
            if not example.end_stream:
                return Outcome("abandoned")
            whole = example.preface == PREFACE and example.before != MISALIGNING
            if not whole:
                half_close(sock)  # the server waits for the rest of a frame that never comes: it must close now
            return read_h2_stream(sock, acknowledge=whole)
    except TimeoutError:
        return Outcome("timeout", f"no end of stream 1 in {TIMEOUT}s")


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except ConnectionError:
        pass  # the server closed the connection: the next read says how


def read_h2_stream(sock: socket.socket, acknowledge: bool) -> Outcome:
    """acknowledge: answer the server's SETTINGS and PINGs (not once half-closed)."""
    decoder = hpack.Decoder()
    buffer, fields, block = b"", {}, b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionError:
            return Outcome("closed")
        if not chunk:
            return h2_status(fields, "closed")
        buffer += chunk
        while len(buffer) >= 9:
            f, length = h2frame.Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            f.parse_body(memoryview(buffer[9:9 + length]))
            buffer = buffer[9 + length:]
            if acknowledge and isinstance(f, h2frame.SettingsFrame) and "ACK" not in f.flags:
                send_quietly(sock, frame(h2frame.SettingsFrame, 0, ("ACK",)))
            elif acknowledge and isinstance(f, h2frame.PingFrame) and "ACK" not in f.flags:
                send_quietly(sock, frame(h2frame.PingFrame, 0, ("ACK",), opaque_data=f.opaque_data))
            elif isinstance(f, h2frame.GoAwayFrame):
                return h2_status(fields, "goaway")
            elif f.stream_id != 1:
                continue
            elif isinstance(f, h2frame.RstStreamFrame):
                return h2_status(fields, "reset")
            elif isinstance(f, (h2frame.HeadersFrame, h2frame.ContinuationFrame)):
                block += f.data
                if "END_HEADERS" in f.flags:
                    fields.update({k.lower(): v for k, v in decoder.decode(block, raw=True)})
                    block = b""
            if "END_STREAM" in getattr(f, "flags", ()):
                return h2_status(fields, "ended")
    return Outcome("timeout", f"no end of stream 1 in {TIMEOUT}s")


def h2_status(fields: dict, ending: str) -> Outcome:
    if b"grpc-status" in fields:
        names = {code.value[0]: code.name for code in grpc.StatusCode}
        code = names.get(int(fields[b"grpc-status"]), fields[b"grpc-status"].decode())
        return grpc_outcome(code, fields.get(b"grpc-message", b"").decode("utf-8", "replace"))
    status = fields.get(b":status", b"").decode()
    if status.startswith("5"):
        return Outcome(f":status {status}", f"HTTP/2 :status {status}")
    return Outcome(f":status {status} {ending}" if status else ending)


H2_PATHS = [(PREDICTION + "Predict").encode(), (INFERENCE + "ModelInfer").encode(), b"/grpc.health.v1.Health/Check",
            (PREDICTION + "GetModelMetadata").encode(), b"/x.Y/Z", b"", b"/", b"*", b"//", b"/tensorflow.serving.PredictionService/Predict?x",
            b"/tensorflow.serving.PredictionService/Pre\xff\xfe", b"/\xc3\x28", b"/\xed\xa0\x80", b"/" + b"a" * 3000]
NON_UTF8 = re.compile(rb"[\x80-\xff]")


OTHER_VALUES = {b":method": [b"GET", b"PUT", b"", b"P\x00ST"], b":scheme": [b"https", b"x"], b":authority": [b"127.0.0.1", b"", b"\xff"],
                b"content-type": [b"application/grpc+proto", b"application/grpc+json", b"text/plain", b"", b"application/grpcx"],
                b"te": [b"gzip", b""]}
EXTRA_HEADERS = [(b"grpc-timeout", [b"1S", b"10S", b"0n", b"xyz", b"99999999999H", b"-1S"]), (b"grpc-encoding", [b"identity", b"gzip", b"x"]),
                 (b"grpc-accept-encoding", [b"gzip", b"\xff"]), (b"authorization", [b"Bearer x", b"\xff\xfe"]),
                 (b"x-bin", [b"AAAA", b"!!!", b""]), (b"x-md", [b"v", b"\x01"]), (b"Upper-Case", [b"1"]), (b"connection", [b"close"])]


def h2_headers(draw, path: bytes) -> tuple:
    """A gRPC call's headers, most often valid (libgrpc answers the others itself, fastserve never
    sees them); else with one or two changed or missing, or extra ones."""
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"x"),
               (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2]))):
        i = draw(st.integers(0, len(headers) - 1))
        name = headers[i][0]
        if name not in OTHER_VALUES or rarely(draw, 4):
            del headers[i]
        else:
            headers[i] = (name, draw(st.sampled_from(OTHER_VALUES[name])))
    for name, values in draw(mostly(st.just([]), st.lists(st.sampled_from(EXTRA_HEADERS), min_size=1, max_size=2, unique_by=lambda e: e[0]))):
        headers.append((name, draw(st.sampled_from(values))))
    return tuple(headers)


@st.composite
def h2_exchange(draw, aio: bool = False) -> H2Exchange:
    """One gRPC call's HTTP/2 stream. aio: without what grpc.aio itself fails, each tested in
    test_e2e_hostile_input: a :path that is not UTF-8 stops its server (fastserve starts it again,
    the calls in flight cancelled), and a stream that ends before its message is never answered."""
    path = draw(mostly(st.sampled_from(METHODS).map(str.encode), st.sampled_from(H2_PATHS), st.binary(max_size=40).map(lambda b: b"/" + b)))
    if aio and NON_UTF8.search(path):
        path = path.decode("utf-8", "replace").encode()
    payload = draw(st.one_of(tf_serving_call(), model_infer_call(), st.just(GrpcCall("", b"")), raw_grpc_call())).payload
    framing = draw(st.sampled_from(["message", "message", "message", "flag", "truncated", "long", "huge", "two", "split", "none", "prefix"]))
    prefix = {"flag": struct.pack(">BI", draw(st.integers(1, 255)), len(payload)), "long": struct.pack(">BI", 0, len(payload) + 7),
              "huge": struct.pack(">BI", 0, 2**32 - 1), "truncated": struct.pack(">BI", 0, len(payload))}.get(framing, struct.pack(">BI", 0, len(payload)))
    message = prefix + payload
    if framing == "truncated":
        message = message[: draw(st.integers(0, len(message) - 1))]
    chunks = {"none": (), "prefix": (message[:3],), "two": (message, message), "split": (message[:5], message[5:])}.get(framing, (message,))
    before = draw(st.sampled_from([b""] * 6 + [
        frame(h2frame.WindowUpdateFrame, 0, window_increment=1), frame(h2frame.PingFrame, 0, opaque_data=b"12345678"),
        frame(h2frame.PriorityFrame, 1, depends_on=1), frame(h2frame.DataFrame, 3, data=b"x"), frame(h2frame.RstStreamFrame, 5),
        frame(h2frame.SettingsFrame, 0, settings={4: 2**31}), frame(h2frame.SettingsFrame, 0, settings={5: 1}),
        frame(h2frame.ContinuationFrame, 1, data=b"\x82"), b"\x00\x00\x01\xee\x00\x00\x00\x00\x01x", MISALIGNING,
        frame(h2frame.HeadersFrame, 2, ("END_HEADERS",), data=b"\x82"),
    ]))
    end_stream = not rarely(draw, 10)
    if aio and framing in ("truncated", "long", "none", "prefix"):
        chunks = (struct.pack(">BI", 0, len(payload)) + payload,)
    preface = PREFACE if not rarely(draw, 30) else draw(st.sampled_from([b"", b"PRI * HTTP/2.0\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]))
    return H2Exchange(h2_headers(draw, path), chunks, end_stream, before, preface)


# ---------------------------------------------------------------- surfaces, probes, runs


@dataclass(frozen=True)
class Surface:
    name: str
    protocol: str  # "rest" or "grpc"
    strategy: object  # transport -> the strategy of its examples
    send: object  # (Target, example) -> Outcome
    regressions: tuple = ()  # inputs once answered 5xx/INTERNAL or worse: sent first, every run


# ---------------------------------------------------------------- regressions: what fuzzing and probes found


def nested_json(depth: int, leaf: str) -> str:
    return "[" * depth + leaf + "]" * depth


def post(path: str, body: str, headers=(), data: bytes = b"") -> HttpRequest:
    return HttpRequest("POST", path.encode(), body.encode() + data, headers)


def binary(path: str, header: str, data: bytes = b"") -> HttpRequest:
    return post(path, header, ((b"Inference-Header-Content-Length", str(len(header)).encode()),), data)


def v2_input(name: str, datatype: str, shape: list, **fields) -> str:
    return json.dumps({"name": name, "datatype": datatype, "shape": shape, **fields})


def tensor(dtype: int, dims: list, **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    for name, listed in values.items():
        getattr(proto, name).extend(listed)
    return proto


def predict_call(model: str, signature: str, name: str, proto: tensor_pb2.TensorProto) -> GrpcCall:
    request = predict_pb2.PredictRequest(model_spec={"name": model, "signature_name": signature})
    request.inputs[name].CopyFrom(proto)
    return GrpcCall(PREDICTION + "Predict", request.SerializeToString())


def infer_call(model: str, name: str, datatype: str, shape: list, raw: bytes | None = None, contents=None, version: str = "",
               signature: str = "") -> GrpcCall:
    request = V2.ModelInferRequest(model_name=model, model_version=version)
    if signature:
        request.parameters["signature_name"].string_param = signature
    request.inputs.add(name=name, datatype=datatype, shape=shape, contents=contents)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return GrpcCall(INFERENCE + "ModelInfer", request.SerializeToString())


DT_FLOAT, DT_STRING = 1, 7
DEEP = 100_000  # nesting depth: Python's JSON parser recursed into a RecursionError
HUGE_EMPTY = [0, 2**62]  # no elements, but numpy refused to make an array of that shape
REGRESSIONS = {
    "rest_v1_predict": (
        post("/v1/models/echo:predict", '{"inputs": {"s": ' + nested_json(33, '"s"') + "}}"),  # crashed TensorFlow (SIGSEGV)
        post("/v1/models/half_plus_two:predict", '{"instances": ' + nested_json(DEEP, "1") + "}"),
        post("/v1/models/half_plus_two:predict", '{"signature_name": "\\udcff", "instances": [[1.0]]}'),
        post("/v1/models/multi_io:predict", '{"inputs": {"a": [[1.0, 2.0]], "b": [1], "tag": {"b64": "aGk="}}}'),
        post("/v1/models/echo:predict", '{"inputs": {"s": [["a", "b"], ["c"]]}}'),
    ),
    "rest_v1_classify_regress": (
        post("/v1/models/example_scorer:classify", '{"signature_name": "classify_x_to_y", "examples": ' + nested_json(DEEP, "") + "}"),
        post("/v1/models/example_scorer:regress", '{"signature_name": "regress_x_to_y", "examples": [{"\\udcff": 1.0}]}'),
    ),
    "rest_get": (HttpRequest("GET", b"/v2/models/half_plus_two/versions/%C2%B2"),),
    "rest_v2_json": tuple(post(path, '{"inputs": [' + tensor_json + "]" + extra + "}") for path, tensor_json, extra in [
        ("/v2/models/echo/infer", v2_input("s", "BYTES", [1] * 33, data=["s"]), ""),
        ("/v2/models/half_plus_two/infer", v2_input("x", "FP32", [2**40, 2**40], data=[1.0]), ""),
        ("/v2/models/half_plus_two/infer", v2_input("x", "FP32", [1, 1], data=[1.0]), ', "outputs": 5'),
        ("/v2/models/half_plus_two/versions/%C2%B2/infer", v2_input("x", "FP32", [1, 1], data=[1.0]), ""),
        ("/v2/models/echo/infer", '{"name": "s", "datatype": "\\udcff", "shape": [1], "data": ["a"]}', ""),
        ("/v2/models/echo/infer", v2_input("x", "FP32", HUGE_EMPTY, data=[]), ', "parameters": {"signature_name": "floats"}'),
        ("/v2/models/half_plus_two/infer", v2_input("x", "FP32", [1, 1], data=[1.0]), ', "id": ' + nested_json(1000, "")),
        ("/v2/models/multi_io/infer", ", ".join([v2_input("a", "FP32", [1, 2], data=[1, 2]), v2_input("b", "INT64", [1], data=[0]),
                                                 v2_input("tag", "BYTES", [], data=["hi"])]), ""),  # a scalar string output
    ]),
    "rest_v2_binary": (
        post("/v2/models/half_plus_two/infer", "{}", ((b"Inference-Header-Content-Length", b"9" * 5000),)),
        binary("/v2/models/echo/infer", '{"parameters": {"signature_name": "floats"}, "inputs": ['
               + v2_input("x", "FP32", HUGE_EMPTY, parameters={"binary_data_size": 0}) + "]}"),
        binary("/v2/models/half_plus_two/infer", '{"inputs": [' + v2_input("x", "FP32", [1, 1], parameters={"binary_data_size": 4})
               + '], "id": ' + nested_json(1000, "") + "}", np.float32(1).tobytes()),
    ),
    "grpc_tf_serving": (
        predict_call("echo", "", "s", tensor(DT_STRING, [1] * 33, string_val=[b"s"])),
        predict_call("half_plus_two", "", "x", tensor(DT_FLOAT, [2**40], float_val=[1.0])),  # never answered on native
        predict_call("echo", "floats", "x", tensor(DT_FLOAT, [2**28, 1], float_val=[1.0])),  # expanded to 1 GiB first
        predict_call("echo", "floats", "x", tensor(DT_FLOAT, HUGE_EMPTY)),
    ),
    "grpc_model_infer": (
        infer_call("echo", "s", "BYTES", [1] * 33, contents={"bytes_contents": [b"s"]}),
        infer_call("half_plus_two", "x", "FP32", [2**40, 2**40], contents={"fp32_contents": [1.0]}),
        infer_call("half_plus_two", "x", "FP32", [1, 1], contents={"fp32_contents": [1.0]}, version="\u00b2"),
        infer_call("echo", "x", "FP32", HUGE_EMPTY, raw=b"", signature="floats"),
        infer_call("echo", "x", "FP32", HUGE_EMPTY, signature="floats"),
    ),
    "h2_frames": (  # a token check on an admin method (native hands it over as bytes)
        H2Exchange(((b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/tensorflow.serving.ModelService/HandleReloadConfigRequest"),
                    (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"authorization", b"\xff\xfe")),
                   (b"\x00\x00\x00\x00\x00",)),
    ),
}

SURFACES = {s.name: s for s in [
    Surface("rest_v1_predict", "rest", lambda transport: v1_predict(), send_http, REGRESSIONS["rest_v1_predict"]),
    Surface("rest_v1_classify_regress", "rest", lambda transport: v1_examples(), send_http, REGRESSIONS["rest_v1_classify_regress"]),
    Surface("rest_get", "rest", lambda transport: rest_get(), send_http, REGRESSIONS["rest_get"]),
    Surface("rest_v2_json", "rest", lambda transport: v2_infer_json(), send_http, REGRESSIONS["rest_v2_json"]),
    Surface("rest_v2_binary", "rest", lambda transport: v2_infer_binary(), send_http, REGRESSIONS["rest_v2_binary"]),
    Surface("http1_raw", "rest", lambda transport: raw_http(), send_raw_http),
    Surface("grpc_tf_serving", "grpc", lambda transport: tf_serving_call(), send_grpc, REGRESSIONS["grpc_tf_serving"]),
    Surface("grpc_model_infer", "grpc", lambda transport: model_infer_call(), send_grpc, REGRESSIONS["grpc_model_infer"]),
    Surface("grpc_raw_bytes", "grpc", lambda transport: raw_grpc_call(), send_grpc),
    Surface("h2_frames", "grpc", lambda transport: h2_exchange(aio=transport == "aio"), send_h2, REGRESSIONS["h2_frames"]),
]}

PROBE_GRPC = predict_pb2.PredictRequest(
    model_spec={"name": "half_plus_two"}, inputs={"x": tensor_proto.from_numpy(np.array([[1.0]], np.float32), tensor_pb2.TensorProto())}
).SerializeToString()


class Prober:
    """A server's probe process (tests/fuzz_probe.py): a REST and a gRPC predict every 50 ms."""

    def __init__(self, server):
        self._proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz_probe", str(server.rest_port), server.grpc_target, PROBE_GRPC.hex()],
                                      cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def take(self) -> dict:
        """{"rest": [seconds], "grpc": [seconds], "failures": [text]} since the last take."""
        self._proc.stdin.write("\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(TIMEOUT)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Report:
    surface: str
    transport: str
    sent: int = 0
    statuses: dict = field(default_factory=dict)
    library: int = 0  # libgrpc's own answers to broken framing
    bad: list = field(default_factory=list)  # (example, Outcome)
    probes: dict = field(default_factory=dict)
    probe_failures: list = field(default_factory=list)
    rss_before: float = 0.0
    rss_after: float = 0.0
    seconds: float = 0.0

    def record(self, example, outcome: Outcome) -> None:
        self.sent += 1
        self.statuses[outcome.status] = self.statuses.get(outcome.status, 0) + 1
        self.library += outcome.library
        if outcome.bad:
            self.bad.append((example, outcome))

    def probe_ms(self, q: float) -> dict[str, float]:
        return {protocol: percentile(values, q) * 1000 for protocol, values in self.probes.items()}

    def summary(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items(), key=lambda kv: -kv[1]))
        p99, worst = self.probe_ms(99), self.probe_ms(100)
        probes = ", ".join(f"{p} p99 {p99[p]:.1f} ms max {worst[p]:.1f} ms ({len(self.probes[p])})" for p in self.probes)
        return (f"{self.surface} [{self.transport}]: {self.sent} examples in {self.seconds:.1f}s; {statuses}; "
                f"libgrpc answers {self.library}; bad {len(self.bad)}; probes {probes}; probe failures {len(self.probe_failures)}; "
                f"RSS {self.rss_before:.0f} -> {self.rss_after:.0f} MB")


def run_surface(target: Target, surface: Surface, examples: int, strict: bool = True, seed: int | None = None) -> Report:
    """Send `examples` generated examples of the surface, probing all along. strict (CI): the first
    bad answer fails the run (hypothesis then shrinks it to a small input); else every bad answer
    is recorded and the run goes on. seed: a random run (the soak) instead of the derandomized one."""
    report = Report(surface.name, target.transport)

    def check(example) -> None:
        try:
            outcome = surface.send(target, example)
        except Exception as exc:  # noqa: BLE001 - the soak records a client's failure too, and goes on
            if strict:
                raise
            outcome = Outcome("client error", f"the fuzzer failed: {type(exc).__name__}: {exc}")
        report.record(example, outcome)
        assert not (strict and outcome.bad), f"{surface.name} on {target.transport}: {outcome.bad}"

    phases = (Phase.explicit, Phase.generate, Phase.shrink) if strict else (Phase.explicit, Phase.generate)
    run = settings(max_examples=examples, deadline=None, derandomize=seed is None, database=None, phases=phases,
                   suppress_health_check=list(HealthCheck), report_multiple_bugs=False)(given(surface.strategy(target.transport))(check))
    for case in surface.regressions:
        run = example(case)(run)
    if seed is not None:
        run = hypothesis_seed(seed)(run)
    pid = target.server.proc.pid
    report.rss_before = rss_mb(pid)
    started = time.monotonic()
    target.prober.take()  # from here on
    try:
        run()
    finally:
        report.seconds = time.monotonic() - started
        taken = target.prober.take()
        report.probe_failures = taken.pop("failures")
        report.probes = taken
    report.rss_after = rss_mb(pid)
    return report


def warm_up(target: Target, examples: int = 30) -> list:
    """A few examples of every surface before RSS is first read (the first of each kind of request
    loads code and fills caches for good); the bad answers among them."""
    return [bad for surface in SURFACES.values() for bad in run_surface(target, surface, examples, strict=False).bad]
