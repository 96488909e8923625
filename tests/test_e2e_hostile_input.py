"""End to end: hostile request bodies get a 4xx answer and the server keeps serving.

Each case is one a security probe found answered 5xx/INTERNAL, hanging, expanded to
gigabytes, or crashing the process (a string tensor of rank 33 killed it inside
TensorFlow). Every one must now get its status (400 / INVALID_ARGUMENT unless said
otherwise: a scalar string where a model takes a vector is what TensorFlow broadcasts,
200) on every transport, and a probe request right after must be answered.
"""
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import h2.config
import h2.connection
import h2.events
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT
from fastserve_client import protos
from tests.conftest import EXAMPLE_MODELS

V2 = protos.inference()
TRANSPORTS = ["native", "aio"] if NATIVE_BUILT else ["aio"]


def export_echo(path) -> None:
    """Inputs of unknown rank: a string one (serving_default) and a float one (floats)."""

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="s")])
        def serve(self, s):
            return {"n": tf.size(s)}

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
        def floats(self, x):
            return {"n": tf.size(x)}

    module = Echo()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "floats": module.floats})


@pytest.fixture(scope="module")
def servers(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    export_echo(root / "echo" / "1")
    config = root / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: echo, base_path: {root / 'echo'}}}\n"
        f"  - {{name: half_plus_two, base_path: {EXAMPLE_MODELS / 'half_plus_two'}}}\n"
        f"  - {{name: multi_io, base_path: {EXAMPLE_MODELS / 'multi_io'}}}\n"
        f"  - {{name: example_scorer, base_path: {EXAMPLE_MODELS / 'example_scorer'}}}\n"
        f"  - {{name: batched, base_path: {EXAMPLE_MODELS / 'half_plus_two'}, batching: {{max_batch_size: 64, batch_timeout_micros: 2000}}}}\n"
    )
    return {t: start_server([f"--config={config}", f"--grpc_transport={t}"]) for t in TRANSPORTS}


def nested(depth: int, leaf) -> list:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def assert_serving(server) -> None:
    response = requests.post(f"{server.rest}/v1/models/half_plus_two:predict", json={"instances": [[1.0]]}, timeout=10)
    assert (response.status_code, response.json()) == (200, {"predictions": [[2.5]]})
    with server.channel() as channel:
        assert tf.make_ndarray(predict(channel, "half_plus_two", {"x": np.array([[2.0]], np.float32)}).outputs["y"]).tolist() == [[3.0]]


def predict(channel, model: str, inputs: dict, signature: str = "", timeout: float = 30):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if isinstance(value, type(request.inputs[name])) else tf.make_tensor_proto(value))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


# ---------------------------------------------------------------- REST bodies

DEEP = 100_000  # nesting depth: Python's JSON parser recursed into a RecursionError (500)


def v2_infer(inputs, **extra) -> dict:
    return {"inputs": inputs, **extra}


REST_CASES = {
    "v1 string tensor of rank 33": ("/v1/models/echo:predict", {"inputs": {"s": nested(33, "s")}}, 400, "rank 33"),
    "v2 BYTES tensor of rank 33": ("/v2/models/echo/infer", v2_infer([{"name": "s", "datatype": "BYTES", "shape": [1] * 33, "data": ["s"]}]), 400, "rank 33"),
    "v1 deep nesting": ("/v1/models/half_plus_two:predict", '{"instances": ' + "[" * DEEP + "1" + "]" * DEEP + "}", 400, "nests too deep"),
    "v2 deep nesting": ("/v2/models/half_plus_two/infer", '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": ' + "[" * DEEP + "1" + "]" * DEEP + "}]}", 400, "JSON Parse error"),
    "classify deep nesting": ("/v1/models/example_scorer:classify", '{"signature_name": "classify_x_to_y", "examples": ' + "[" * DEEP + "]" * DEEP + "}", 400, "JSON Parse error"),
    "regress deep nesting": ("/v1/models/example_scorer:regress", '{"signature_name": "regress_x_to_y", "examples": ' + "[" * DEEP + "]" * DEEP + "}", 400, "JSON Parse error"),
    "lone surrogate in signature_name": ("/v1/models/half_plus_two:predict", '{"signature_name": "\\udcff", "instances": [[1.0]]}', 400, "surrogate"),
    "lone surrogate in a string input": ("/v1/models/echo:predict", '{"inputs": {"s": ["\\udcff"]}}', 400, "surrogate"),
    "lone surrogate in a V2 datatype": ("/v2/models/echo/infer", '{"inputs": [{"name": "s", "datatype": "\\udcff", "shape": [1], "data": ["a"]}]}', 400, "surrogate"),
    "lone surrogate in a V2 name": ("/v2/models/echo/infer", '{"inputs": [{"name": "\\udcff", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}', 400, "surrogate"),
    "lone surrogate in a classify feature": ("/v1/models/example_scorer:classify", '{"signature_name": "classify_x_to_y", "examples": [{"\\udcff": 1.0}]}', 400, "surrogate"),
    "V2 shape whose product overflows": ("/v2/models/half_plus_two/infer", v2_infer([{"name": "x", "datatype": "FP32", "shape": [2**40, 2**40], "data": [1.0]}]), 400, "needs 1208925819614629174706176 elements"),
    "V2 zero-sized shape whose other dimensions are huge": ("/v2/models/echo/infer", v2_infer([{"name": "x", "datatype": "FP32", "shape": [0, 2**62], "data": []}], parameters={"signature_name": "floats"}), 400, "is too large"),
    "V2 id nested 1000 deep": ("/v2/models/half_plus_two/infer", '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}], "id": ' + "[" * 1000 + "]" * 1000 + "}", 400, "'id' must be a string"),
    "V2 outputs that are not a list": ("/v2/models/half_plus_two/infer", v2_infer([{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}], outputs=5), 400, "'outputs' must be a list"),
    "a scalar b64 for a string input": ("/v1/models/multi_io:predict", {"inputs": {"a": [[1.0, 2.0]], "b": [1], "tag": {"b64": "aGk="}}}, 200, ""),
    "ragged string rows": ("/v1/models/echo:predict", {"inputs": {"s": [["a", "b"], ["c"]]}}, 400, "same shape"),
    "a string under a string": ("/v1/models/echo:predict", {"inputs": {"s": ["a", ["b"]]}}, 400, "same shape"),
}


@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_hostile_rest_bodies_get_4xx(servers, case):
    server = next(iter(servers.values()))
    path, body, status, text = REST_CASES[case]
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = requests.post(server.rest + path, data=data, timeout=30)
    assert response.status_code == status, response.text
    assert status == 200 or text in response.json()["error"]
    assert_serving(server)


@pytest.mark.parametrize("version", ["%C2%B2", "9" * 4300])
def test_v2_versions_that_are_not_numbers(servers, version):
    server = next(iter(servers.values()))
    body = v2_infer([{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}])
    response = requests.post(f"{server.rest}/v2/models/half_plus_two/versions/{version}/infer", json=body, timeout=30)
    assert response.status_code == 400 and "is not a version number" in response.json()["error"]
    response = requests.get(f"{server.rest}/v2/models/half_plus_two/versions/{version}", timeout=30)
    assert response.status_code == 400


def test_a_header_length_of_5000_digits(servers):
    server = next(iter(servers.values()))
    headers = {"Inference-Header-Content-Length": "9" * 5000}
    response = requests.post(f"{server.rest}/v2/models/half_plus_two/infer", data=b"{}", headers=headers, timeout=30)
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]


def test_a_scalar_string_output(servers):
    """multi_io returns its string input as it is and upper-cased: a scalar one came back as
    fixed-width bytes, which dropped trailing NULs and which V2 JSON could not encode (500; found
    by fuzzing)."""
    server = next(iter(servers.values()))
    inputs = [{"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}, {"name": "b", "datatype": "INT64", "shape": [1], "data": [0]},
              {"name": "tag", "datatype": "BYTES", "shape": [], "data": ["hi"]}]
    response = requests.post(f"{server.rest}/v2/models/multi_io/infer", json=v2_infer(inputs), timeout=30)
    assert response.status_code == 200, response.text
    assert {"name": "tag_upper", "datatype": "BYTES", "shape": [], "data": ["HI"]} in response.json()["outputs"]
    response = requests.post(f"{server.rest}/v1/models/multi_io:predict", json={"inputs": {"a": [[1, 2]], "b": [0], "tag": {"b64": "aGkA"}}}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["tag_bytes"] == {"b64": "aGkA"}  # b"hi\0"


def test_rank_32_still_serves(servers):
    server = next(iter(servers.values()))
    response = requests.post(f"{server.rest}/v1/models/echo:predict", json={"inputs": {"s": nested(32, "s")}}, timeout=30)
    assert (response.status_code, response.json()) == (200, {"outputs": 1})


# ---------------------------------------------------------------- gRPC messages


def string_proto(rank: int) -> tf.Tensor:
    proto = tf.make_tensor_proto(np.array([b"s"], dtype=object))
    del proto.tensor_shape.dim[:]
    for _ in range(rank):
        proto.tensor_shape.dim.add(size=1)
    return proto


def implied_floats(*dims: int):
    """A float TensorProto of this shape carrying one value (TensorFlow repeats it)."""
    proto = tf.make_tensor_proto(np.array([1.0], np.float32))
    proto.ClearField("tensor_content")
    proto.float_val.append(1.0)
    del proto.tensor_shape.dim[:]
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


def assert_invalid(call, text: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert text in err.value.details()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_string_tensor_of_rank_33_is_refused(servers, transport):
    server = servers[transport]
    with server.channel() as channel:
        assert_invalid(lambda: predict(channel, "echo", {"s": string_proto(33)}), "rank 33")
        infer = V2.ModelInferRequest(model_name="echo")
        infer.inputs.add(name="s", datatype="BYTES", shape=[1] * 33).contents.bytes_contents.append(b"s")
        stub = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", V2.ModelInferRequest.SerializeToString,
                                   V2.ModelInferResponse.FromString)
        assert_invalid(lambda: stub(infer, timeout=30), "rank 33")
        assert tf.make_ndarray(predict(channel, "echo", {"s": string_proto(32)}).outputs["n"]) == 1
    assert_serving(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("model", ["half_plus_two", "batched"])
def test_implied_values_are_bounded_and_fail_alone(servers, transport, model):
    """dims [2^40] with one value was never answered on native (and hung the calls that arrived
    with it); dims [2^28, 1] was expanded to 1 GiB before being refused."""
    server = servers[transport]
    with server.channel() as channel:
        started = time.monotonic()
        assert_invalid(lambda: predict(channel, "echo", {"x": implied_floats(2**28, 1)}, signature="floats"), "implied values")
        assert time.monotonic() - started < 5  # refused from its shape, not after building a gigabyte
        good = [np.array([[float(i)]], np.float32) for i in range(50)]
        with ThreadPoolExecutor(16) as pool:
            bad = pool.submit(lambda: predict(channel, model, {"x": implied_floats(2**40)}))
            answers = list(pool.map(lambda x: predict(channel, model, {"x": x}), good))
            with pytest.raises(grpc.RpcError) as err:
                bad.result()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [tf.make_ndarray(a.outputs["y"]).tolist() for a in answers] == [[[0.5 * i + 2]] for i in range(50)]
    assert_serving(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_v2_grpc_shapes_and_versions(servers, transport):
    server = servers[transport]
    with server.channel() as channel:
        stub = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", V2.ModelInferRequest.SerializeToString,
                                   V2.ModelInferResponse.FromString)
        overflow = V2.ModelInferRequest(model_name="half_plus_two")
        overflow.inputs.add(name="x", datatype="FP32", shape=[2**40, 2**40]).contents.fp32_contents.append(1.0)
        assert_invalid(lambda: stub(overflow, timeout=30), "elements")
        for version in ("²", "9" * 4300):
            request = V2.ModelInferRequest(model_name="half_plus_two", model_version=version)
            request.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
            assert_invalid(lambda: stub(request, timeout=30), "is not a version number")  # noqa: B023  called at once
    assert_serving(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_zero_sized_shape_whose_other_dimensions_are_huge(servers, transport):
    """dims [0, 2^62] hold no elements, but numpy refused to make an array of that shape: INTERNAL
    on every path (a fuzzer's find)."""
    server = servers[transport]
    empty = tf.make_tensor_proto(np.zeros(0, np.float32))
    del empty.tensor_shape.dim[:]
    for size in (0, 2**62):
        empty.tensor_shape.dim.add(size=size)
    with server.channel() as channel:
        assert_invalid(lambda: predict(channel, "echo", {"x": empty}, signature="floats"), "is too large")
        stub = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", V2.ModelInferRequest.SerializeToString,
                                   V2.ModelInferResponse.FromString)
        for raw in (b"", None):
            request = V2.ModelInferRequest(model_name="echo")
            request.parameters["signature_name"].string_param = "floats"
            request.inputs.add(name="x", datatype="FP32", shape=[2**62, 0])
            if raw is not None:
                request.raw_input_contents.append(raw)
            assert_invalid(lambda: stub(request, timeout=30), "is too large")  # noqa: B023  called at once
    assert_serving(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_10kb_model_name_is_not_found(servers, transport):
    """Its error echoes the name; a status message over the clients' 8 KB metadata limit
    reached them as RESOURCE_EXHAUSTED."""
    with servers[transport].channel() as channel:
        with pytest.raises(grpc.RpcError) as err:
            predict(channel, "m" * 10_000, {"x": np.array([[1.0]], np.float32)})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().endswith("(truncated)")
    # over REST the name is in the URL, refused on its length (rest_max_url_bytes) before it is parsed
    response = requests.post(f"{servers[transport].rest}/v1/models/{'m' * 10_000}:predict", json={"instances": [[1.0]]}, timeout=30)
    assert response.status_code == 414
    assert "longer than the limit of 8192 bytes" in response.json()["error"]
    response = requests.post(f"{servers[transport].rest}/v1/models/{'m' * 4_000}:predict", json={"instances": [[1.0]]}, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"].endswith("(truncated)")


def grpc_call_with_raw_path(target: str, path: bytes, metadata=(), body: bytes = b"\x00\x00\x00\x00\x00", timeout: float = 10) -> dict:
    """A gRPC call whose :path, metadata and body (an empty message unless said) are any bytes, over
    hand-built HTTP/2; its response headers and trailers."""
    host, port = target.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"fastserve"),
                               (b"content-type", b"application/grpc"), (b"te", b"trailers"), *metadata])
    conn.send_data(stream, body, end_stream=True)
    headers: dict = {}
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        while data := sock.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers.update(event.headers)
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return headers
            sock.sendall(conn.data_to_send())
    return headers


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_method_name_that_is_not_utf8(servers, transport):
    """The native transport answers UNIMPLEMENTED. grpc.aio raises while decoding the name, before
    any handler, and stops its whole server (it stayed down for good): fastserve serves again at once
    on the same port; the calls then in flight on it are cancelled by grpc.aio."""
    server = servers[transport]
    headers = grpc_call_with_raw_path(server.grpc_target, b"/tensorflow.serving.PredictionService/\xff\xfe")
    if transport == "native":
        assert headers[b"grpc-status"] == b"12", headers  # UNIMPLEMENTED
    else:
        assert headers[b"grpc-status"] in (b"1", b"12"), headers
        deadline = time.monotonic() + 10
        while "stopped by itself (UnicodeDecodeError" not in server.log():
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.1)
    deadline = time.monotonic() + 5
    while True:  # grpc.aio: the port is bound again within moments
        try:
            assert_serving(server)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize("transport", [pytest.param(t, marks=pytest.mark.xfail(
    t == "aio", raises=TimeoutError, strict=True, reason="grpc.aio never answers a unary call whose stream ends before its message"))
    for t in TRANSPORTS])
def test_a_call_that_ends_before_its_message_is_answered(servers, transport):
    """A stream that ends with no message, or with one cut short (hand-built HTTP/2; found by fuzzing)."""
    for body in (b"", b"\x00\x00\x00\x00\x07abc"):
        headers = grpc_call_with_raw_path(servers[transport].grpc_target, b"/tensorflow.serving.PredictionService/Predict",
                                          body=body, timeout=3)
        assert b"grpc-status" in headers, headers
    assert_serving(servers[transport])
