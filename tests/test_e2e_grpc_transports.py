"""The gRPC frontend on both transports (native libgrpc++ and grpc.aio): the same calls, the same answers.

One server per transport serves half_plus_two and an adder with a "slow" signature (to hold
calls in flight), on TCP and a unix socket, with a 6 MB message limit.
"""
import shutil
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT
from tests.conftest import EXAMPLE_MODELS
from tests.model_builder import export_adder
from tests.test_e2e_metrics import scrape, value

TRANSPORTS = [
    pytest.param("native", marks=pytest.mark.skipif(not NATIVE_BUILT, reason="built without libgrpc++")),
    "aio",
]
MAX_RECEIVE_BYTES = 6_000_000  # above gRPC's default of 4 MiB


@pytest.fixture(scope="module", params=TRANSPORTS)
def server(request, start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("transport")
    export_adder(root / "m" / "1", 1.0)
    config = root / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: half_plus_two, base_path: {EXAMPLE_MODELS / 'half_plus_two'}}}\n"
        f"  - {{name: m, base_path: {root / 'm'}}}\n"
    )
    server = start_server(
        [
            f"--config={config}", f"--grpc_transport={request.param}", f"--grpc_socket_path={root / 'grpc.sock'}",
            f"--grpc_max_receive_bytes={MAX_RECEIVE_BYTES}", "--shutdown_grace_seconds=20",
        ],
    )
    server.transport = request.param
    server.socket_path = root / "grpc.sock"
    return server


def predict_request(model: str, inputs: dict, signature: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request


def slow_request(seconds: float) -> predict_pb2.PredictRequest:
    return predict_request("m", {"x": np.array([[0.0]], np.float32), "seconds": np.float32(seconds)}, "slow")


def prediction_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def half_plus_two(channel, x: float, timeout: float = 30) -> float:
    response = prediction_stub(channel).Predict(predict_request("half_plus_two", {"x": np.array([[x]], np.float32)}), timeout=timeout)
    return tf.make_ndarray(response.outputs["y"]).item()


def test_log_names_the_transport(server):
    expected = "native (libgrpc++)" if server.transport == "native" else "grpc.aio"
    assert f"gRPC transport: {expected}" in server.log()


def test_predict_metadata_and_status(server):
    with server.channel() as channel:
        request = predict_request("half_plus_two", {"x": np.array([[1.0], [2.0]], np.float32)})
        response = prediction_stub(channel).Predict(request, timeout=30)
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.5], [3.0]]
        assert (response.model_spec.name, response.model_spec.version.value) == ("half_plus_two", 1)

        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = "half_plus_two"
        response = prediction_stub(channel).GetModelMetadata(metadata, timeout=30)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        assert "serving_default" in signatures.signature_def

        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "m"
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=30)
        assert [(v.version, v.state) for v in response.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        ]


def test_health_check(server):
    with server.channel() as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_errors_have_tf_serving_codes_and_messages(server):
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as err:
            prediction_stub(channel).Predict(predict_request("nope", {"x": np.array([[1.0]], np.float32)}), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Servable not found for request: Latest(nope)" in err.value.details()

        raw_predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as err:
            raw_predict(b"\xff\xff\xff", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed tensorflow.serving.PredictRequest" in err.value.details()

        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/tensorflow.serving.PredictionService/Nope")(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert half_plus_two(channel, 2.0) == 3.0


def test_unix_socket(server):
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        assert half_plus_two(channel, 4.0) == 4.0


def test_message_size_limit(server):
    below = np.ones([1_250_000, 1], np.float32)  # 5 MB: over gRPC's default limit, under the configured one
    above = np.ones([1_750_000, 1], np.float32)  # 7 MB
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_receive_message_length", 2**30)]) as channel:
        response = prediction_stub(channel).Predict(predict_request("half_plus_two", {"x": below}), timeout=60)
        y = tf.make_ndarray(response.outputs["y"])
        assert y.shape == (1_250_000, 1) and float(y.min()) == float(y.max()) == 2.5  # a 5 MB answer too
        with pytest.raises(grpc.RpcError) as err:
            prediction_stub(channel).Predict(predict_request("half_plus_two", {"x": above}), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert half_plus_two(channel, 0.0) == 2.0


def test_deadline_passing_while_the_model_runs(server):
    with server.channel() as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            prediction_stub(channel).Predict(slow_request(2.0), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5
        assert half_plus_two(channel, 2.0, timeout=5) == 3.0


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="needs nghttp (Debian package nghttp2-client)")
def test_already_expired_call_is_answered_deadline_exceeded(server, tmp_path):
    """A call whose deadline has passed when it arrives (grpc-timeout: 1 ns) never runs."""
    payload = slow_request(5.0).SerializeToString()  # would hold an executor thread for 5 s if it ran
    body = tmp_path / "call.bin"
    body.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)  # gRPC's length-prefixed message
    headers = ["content-type: application/grpc", "te: trailers", "grpc-timeout: 1n"]
    def expired(samples) -> float:
        # gRPC keeps deadlines to the millisecond: the call expires on arrival (the native transport
        # answers it unparsed: model label empty) or just after (the call step answers it: model m).
        return sum(value(samples, ":tensorflow:serving:request_count_total", model_name=model, status="DEADLINE_EXCEEDED")
                   for model in ("", "m"))

    # gRPC's core may also answer it itself, before the server is handed the call: then it is not
    # counted. Some of a few tries are handed over, and each is counted once.
    counted = 0
    for _ in range(5):
        before = expired(scrape(server))
        started = time.monotonic()
        result = subprocess.run(
            ["nghttp", "-v", "-d", str(body), *[arg for h in headers for arg in ("-H", h)],
             f"http://{server.grpc_target}/tensorflow.serving.PredictionService/Predict"],
            capture_output=True, text=True, timeout=30,
        )
        assert "grpc-status: 4" in result.stdout, result.stdout + result.stderr
        assert time.monotonic() - started < 3
        deadline = time.monotonic() + 2  # the count may land just after the answer
        while expired(scrape(server)) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        after = expired(scrape(server))
        assert after - before in (0, 1)  # never twice
        counted += after - before
    assert counted >= 1
    with server.channel() as channel:
        assert half_plus_two(channel, 2.0, timeout=5) == 3.0


def test_client_cancellations_leave_the_server_serving(server):
    with server.channel() as channel:
        stub = prediction_stub(channel)
        slow = [stub.Predict.future(slow_request(2.0), timeout=30) for _ in range(8)]  # still running when cancelled
        fast = [stub.Predict.future(predict_request("half_plus_two", {"x": np.array([[float(i)]], np.float32)}), timeout=30)
                for i in range(300)]
        for future in fast[::2]:
            future.cancel()
        time.sleep(0.1)
        for future in slow:  # in flight (or queued) now
            future.cancel()
        for i, future in enumerate(fast):
            if i % 2:
                assert tf.make_ndarray(future.result().outputs["y"]).item() == 0.5 * i + 2
        assert [future.code() for future in slow] == [grpc.StatusCode.CANCELLED] * len(slow)
        assert half_plus_two(channel, 2.0, timeout=5) == 3.0
    assert "Traceback" not in server.log()


def test_sigterm_answers_every_accepted_call(server):
    """Runs last for each transport: it stops the module's server."""
    with server.channel() as channel:
        stub = prediction_stub(channel)
        slow = [stub.Predict.future(slow_request(1.5), timeout=30) for _ in range(4)]
        time.sleep(0.5)  # in flight now
        server.proc.send_signal(signal.SIGTERM)
        answers = [tf.make_ndarray(future.result().outputs["y"]).item() for future in slow]
    assert answers == [1.0] * 4
    assert server.proc.wait(30) == 0
    assert "fastserve stopped" in server.log()
