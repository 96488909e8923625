"""End to end on the bundled example models, configured by examples/models.yaml."""
import base64
import socket

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from tests.conftest import EXAMPLES, rest_predict


@pytest.fixture(scope="module")
def server(start_server):
    return start_server([f"--config={EXAMPLES / 'models.yaml'}"])


def grpc_predict(server, model, inputs: dict, **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    return stub.Predict(request, timeout=30)


def assert_still_serving(server):
    response = rest_predict(server, "half_plus_two", {"instances": [[1.0]]})
    assert response.json() == {"predictions": [[2.5]]}


def test_two_models_each_addressable(server):
    assert rest_predict(server, "half_plus_two", {"instances": [[2.0]]}).json() == {"predictions": [[3.0]]}
    assert rest_predict(server, "half_plus_three", {"instances": [[2.0]]}).json() == {"predictions": [[4.0]]}
    response = grpc_predict(server, "half_plus_three", {"x": np.array([[2.0]], np.float32)})
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[4.0]]
    assert response.model_spec.version.value == 1


def test_log_says_what_and_where(server):
    log = server.log()
    assert "serving model half_plus_two versions [1]" in log
    assert f"Running gRPC ModelServer at 127.0.0.1:{server.grpc_port}" in log
    assert f"Exporting HTTP/REST API at 127.0.0.1:{server.rest_port}" in log


def test_multi_io_row_format_named_instances(server):
    body = {"instances": [{"a": [1.0, 2.0], "b": 3, "tag": "x"}, {"a": [0.5, 0.5], "b": -1, "tag": {"b64": base64.b64encode(b"\xff\x00").decode()}}]}
    response = rest_predict(server, "multi_io", body)
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert rows[0] == {"sum": 6.0, "b_doubled": 6, "tag_bytes": {"b64": base64.b64encode(b"x").decode()}, "tag_upper": "X"}
    assert rows[1]["sum"] == 0.0 and rows[1]["b_doubled"] == -2
    assert rows[1]["tag_bytes"] == {"b64": base64.b64encode(b"\xff\x00").decode()}


def test_multi_io_columnar_and_signature_name(server):
    body = {"signature_name": "serving_default", "inputs": {"a": [[1.0, 1.0]], "b": [2], "tag": ["ab"]}}
    response = rest_predict(server, "multi_io", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": {"sum": [4.0], "b_doubled": [4], "tag_bytes": [{"b64": "YWI="}], "tag_upper": ["AB"]}}


def test_multi_io_grpc_strings_and_int64(server):
    response = grpc_predict(
        server, "multi_io",
        {"a": np.array([[1, 2]], np.float32), "b": np.array([5], np.int64), "tag": np.array([b"hi"], object)},
    )
    assert tf.make_ndarray(response.outputs["b_doubled"]).tolist() == [10]
    assert tf.make_ndarray(response.outputs["tag_upper"]).tolist() == [b"HI"]
    assert tf.make_ndarray(response.outputs["sum"]).tolist() == [8.0]


# ---------------------------------------------------------------- errors: clear, and the server keeps serving


@pytest.mark.parametrize(
    "url, body, status, text",
    [
        ("/v1/models/nope:predict", {"instances": [[1.0]]}, 404, "Servable not found for request: Latest(nope)"),
        ("/v1/models/half_plus_two/versions/9:predict", {"instances": [[1.0]]}, 404, "Servable not found for request: Specific(half_plus_two, 9)"),
        ("/v1/models/half_plus_two/labels/canary:predict", {"instances": [[1.0]]}, 400, "Unrecognized servable version label: canary"),
        ("/v1/models/half_plus_two:predict", {"signature_name": "nope", "instances": [[1.0]]}, 400, 'Serving signature name: "nope" not found in signature def'),
        ("/v1/models/half_plus_two:predict", {"instances": [["a"]]}, 400, "input 'x'"),
        ("/v1/models/multi_io:predict", {"inputs": {"a": [[1.0, 1.0], [2.0, 2.0]], "b": [1, 2, 3], "tag": ["x"]}}, 400, "Incompatible shapes"),
        ("/v1/models/half_plus_two:predict", {"instances": [[1.0], [1.0, 2.0]]}, 400, "input 'x'"),
        ("/v1/models/half_plus_two:predict", {"instances": [[1.0]], "inputs": [[1.0]]}, 400, "expecting only one of 'inputs' or 'instances'"),
        ("/v1/models/half_plus_two:predict", {"nothing": 1}, 400, "Missing 'inputs' or 'instances' key"),
        ("/v1/models/multi_io:predict", {"inputs": {"a": [[1.0, 1.0]], "b": [1.5], "tag": ["x"]}}, 400, "input 'b': expects DT_INT64"),
        ("/v1/models/multi_io:predict", {"inputs": {"a": [[1.0, 1.0]], "tag": ["x"]}}, 400, "Missing but required: {b}"),
        ("/v1/models/multi_io:predict", {"instances": [1.0]}, 400, "name each one"),
        ("/v1/models/half_plus_two:regress", {"examples": []}, 400, "'examples'"),
    ],
)
def test_rest_errors(server, url, body, status, text):
    response = requests.post(server.rest + url, json=body, timeout=30)
    assert response.status_code == status, response.text
    assert text in response.json()["error"]
    assert_still_serving(server)


def test_rest_malformed_json(server):
    response = requests.post(f"{server.rest}/v1/models/half_plus_two:predict", data=b'{"instances": [1.0,', timeout=30)
    assert response.status_code == 400
    assert response.json()["error"].startswith("JSON Parse error")
    assert_still_serving(server)


def test_rest_malformed_url_and_http(server):
    response = requests.get(f"{server.rest}/v1/models/half_plus_two:predict", timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": "Malformed request: GET /v1/models/half_plus_two:predict"}
    assert requests.get(f"{server.rest}/elsewhere", timeout=30).status_code == 404
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    assert_still_serving(server)


def test_rest_pipelined_requests_answered_in_order(server):
    body = b'{"instances": [[%d.0]]}'
    requests_bytes = b"".join(
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body % i), body % i)
        for i in range(5)
    )
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(requests_bytes)
        data = b""
        while data.count(b"predictions") < 5:
            data += sock.recv(65536)
    answers = [chunk.split(b"]]")[0] for chunk in data.split(b'{"predictions":[[')[1:]]
    assert answers == [b"%s" % str(0.5 * i + 2).encode() for i in range(5)]


@pytest.mark.parametrize(
    "model, inputs, spec, code, text",
    [
        ("nope", {"x": np.array([[1.0]], np.float32)}, {}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        ("half_plus_two", {"x": np.array([[1.0]], np.float32)}, {"version": 4}, grpc.StatusCode.NOT_FOUND, "Specific(half_plus_two, 4)"),
        ("half_plus_two", {"x": np.array([[1.0]], np.float32)}, {"version_label": "stable"}, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: stable"),
        ("half_plus_two", {"x": np.array([[1.0]], np.float32)}, {"signature_name": "nope"}, grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
        ("half_plus_two", {"x": np.array([[1]], np.int32)}, {}, grpc.StatusCode.INVALID_ARGUMENT, "input 'x': expects dtype DT_FLOAT but got DT_INT32"),
        ("multi_io", {"a": np.ones([2, 2], np.float32), "b": np.ones([3], np.int64), "tag": np.array([b"x"], object)}, {}, grpc.StatusCode.INVALID_ARGUMENT, "Incompatible shapes"),
        ("half_plus_two", {"z": np.array([[1.0]], np.float32)}, {}, grpc.StatusCode.INVALID_ARGUMENT, "input tensor alias not found in signature: z"),
    ],
)
def test_grpc_errors(server, model, inputs, spec, code, text):
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(server, model, inputs, **spec)
    assert err.value.code() == code
    assert text in err.value.details()
    assert_still_serving(server)


def test_grpc_malformed_protobuf(server):
    call = server.channel().unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff garbage", timeout=30)
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert_still_serving(server)


def test_grpc_status_unknown_model(server):
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelStatus(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Could not find any versions of model nope"
    response = requests.get(f"{server.rest}/v1/models/nope", timeout=30)
    assert response.status_code == 404


def test_sigterm_exits_zero(start_server):
    server = start_server([f"--config={EXAMPLES / 'models.yaml'}"])
    assert rest_predict(server, "half_plus_two", {"instances": [[2.0]]}).status_code == 200
    assert server.stop() == 0
    assert "fastserve stopped" in server.log()


def test_rest_expect_100_continue_is_answered_before_the_body(server):
    """curl asks first for bodies over 1 MB; without an answer it waits a second before sending."""
    body = b'{"instances": [[1.0]]}'
    head = (b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        data = b""
        while not data.endswith(b"]]}"):
            data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b'{"predictions":[[2.5]]}')
