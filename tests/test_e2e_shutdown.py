"""End to end: SIGTERM drains, on both gRPC transports: every call accepted before the signal
gets its answer, none is cancelled by the server, and calls after it are refused UNAVAILABLE."""
import signal
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT
from tests.conftest import EXAMPLE_MODELS
from tests.model_builder import export_adder
from tests.test_e2e_metrics import scrape, value

CALLS = 200


def request(model: str, x: float) -> predict_pb2.PredictRequest:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = model
    if model == "slow":
        r.model_spec.signature_name = "slow"
        r.inputs["seconds"].CopyFrom(tf.make_tensor_proto(np.float32(0.05)))
    r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[x]], np.float32)))
    return r


@pytest.mark.parametrize("transport", ["native", "aio"] if NATIVE_BUILT else ["aio"])
@pytest.mark.parametrize("model", ["batched", "slow"])
def test_sigterm_answers_every_call_in_flight(start_server, tmp_path, transport, model):
    """batched: the calls wait in a batch that closes 1 s after the first arrived; slow: they
    wait for the executor's threads (50 ms of work each, 2.5 s in all). SIGTERM comes when all
    are accepted (in flight or answered)."""
    export_adder(tmp_path / "slow" / "1", 2.0)
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: batched, base_path: {EXAMPLE_MODELS / 'half_plus_two'},"
        " batching: {max_batch_size: 512, batch_timeout_micros: 1000000, max_enqueued_batches: 10}}\n"
        f"  - {{name: slow, base_path: {tmp_path / 'slow'}}}\n"
    )
    server = start_server([f"--config={config}", f"--grpc_transport={transport}", "--shutdown_grace_seconds=20"])
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = [stub.Predict.future(request(model, float(i)), timeout=30) for i in range(CALLS)]
        deadline = time.monotonic() + 10
        while value(scrape(server), "fastserve_in_flight_requests", protocol="GRPC") + sum(c.done() for c in calls) < CALLS:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        codes = [call.code() for call in calls]
        answers = [tf.make_ndarray(call.result().outputs["y"]).item() for call in calls if call.code() == grpc.StatusCode.OK]
        with pytest.raises(grpc.RpcError) as late:  # after the signal: refused, not cancelled
            stub.Predict(request(model, 1.0), timeout=10)
    assert codes == [grpc.StatusCode.OK] * CALLS, [(i, c.code(), c.details()) for i, c in enumerate(calls) if c.code() != grpc.StatusCode.OK]
    assert answers == [0.5 * i + 2 if model == "batched" else i + 2.0 for i in range(CALLS)]
    assert late.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.proc.wait(30) == 0
