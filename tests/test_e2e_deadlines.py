"""End to end: a request whose deadline passes, or whose client goes away, while it waits in
the batch queue is answered at once and its rows never reach TensorFlow.

Each case queues DOOMED requests (one burst, so they form a group, or one at a time) for a
model whose batches wait 3 s to fill, lets them die (deadline or client gone), then sends
FILLERS, a full batch of rows: the batch closes full of rows someone still waits for (the
dead members are dropped and their rows filled again) and runs the fillers alone. The
server's batching totals must show exactly the fillers' rows, and every filler gets its
answer. Transports: native gRPC, grpc.aio, REST /v1 and REST /v2.
"""
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT
from tests.conftest import EXAMPLE_MODELS

DOOMED, FILLERS = 3, 8  # the fillers fill a batch on their own
REST_TIMEOUT = 1.0  # --rest_api_timeout_in_ms, seconds
GRPC_TIMEOUT = 0.3


@pytest.fixture(scope="module")
def servers(start_server, tmp_path_factory):
    config = tmp_path_factory.mktemp("deadlines") / "models.yaml"
    batching = f"{{max_batch_size: {FILLERS}, batch_timeout_micros: 3000000, max_enqueued_batches: 100}}"
    names = [f"m{i}" for i in range(20)]  # one queue per case: its batching totals are its own
    config.write_text("models:\n" + "".join(
        f"  - {{name: {name}, base_path: {EXAMPLE_MODELS / 'half_plus_two'}, batching: {batching}}}\n" for name in names))
    transports = ["native", "aio"] if NATIVE_BUILT else ["aio"]
    args = [f"--config={config}", f"--rest_api_timeout_in_ms={int(REST_TIMEOUT * 1000)}"]
    return {t: start_server([*args, f"--grpc_transport={t}"]) for t in transports}, iter(names)


# ---------------------------------------------------------------- one request per transport


def grpc_call(server, model: str, x: float, timeout: float | None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[x]], np.float32)))
    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel()).Predict.future(request, timeout=timeout)


def rest_body(api: str, x: float) -> tuple[str, bytes]:
    if api == "v1":
        return "/v1/models/{model}:predict", json.dumps({"instances": [[x]]}).encode()
    return "/v2/models/{model}/infer", json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [x]}]}).encode()


def rest_answer(api: str, response) -> float:
    body = response.json()
    return body["predictions"][0][0] if api == "v1" else body["outputs"][0]["data"][0]


def raw_http(server, path: str, body: bytes) -> socket.socket:
    """A request sent on a connection of its own, left open (closing it is going away)."""
    conn = socket.create_connection(("127.0.0.1", server.rest_port))
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return conn


class Case:
    """DOOMED requests that die while queued, then FILLERS that fill a batch."""

    def __init__(self, servers, transport: str, grouped: bool):
        by_transport, names = servers
        self.server = by_transport["aio" if transport == "grpc-aio" else "native"]
        self.transport = transport
        self.grouped = grouped
        self.model = next(names)

    def send_doomed(self, why: str) -> list:
        """Start the doomed requests; returns what observes them (futures, sockets)."""
        def one(i):
            if self.transport.startswith("grpc"):
                return grpc_call(self.server, self.model, 100 + i, GRPC_TIMEOUT if why == "expired" else None)
            path, body = rest_body(self.transport[-2:], 100 + i)
            path = path.format(model=self.model)
            if why == "expired":
                return ThreadPoolExecutor(1).submit(requests.post, self.server.rest + path, data=body, timeout=30)
            return raw_http(self.server, path, body)

        if self.grouped:
            return [one(i) for i in range(DOOMED)]
        out = []
        for i in range(DOOMED):  # one at a time: each its own task in the queue
            out.append(one(i))
            time.sleep(0.05)
        return out

    def kill(self, doomed: list, why: str) -> None:
        """Let the doomed requests die: wait out their deadline, or go away."""
        if why == "expired":
            time.sleep((GRPC_TIMEOUT if self.transport.startswith("grpc") else REST_TIMEOUT) + 0.2)
            for d in doomed:
                self.assert_expired(d)
            return
        time.sleep(0.3)
        for d in doomed:
            d.cancel() if self.transport.startswith("grpc") else d.close()
        time.sleep(0.3)

    def assert_expired(self, doomed) -> None:
        if self.transport.startswith("grpc"):
            with pytest.raises(grpc.RpcError) as err:
                doomed.result()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            response = doomed.result()
            assert response.status_code == 504, response.text

    def fill(self) -> list[float]:
        """The fillers, together; their answers."""
        xs = [float(i) for i in range(FILLERS)]
        if self.transport.startswith("grpc"):
            calls = [grpc_call(self.server, self.model, x, 30) for x in xs]
            return [tf.make_ndarray(c.result().outputs["y"])[0][0] for c in calls]
        api = self.transport[-2:]
        with ThreadPoolExecutor(FILLERS) as pool:
            bodies = [rest_body(api, x) for x in xs]
            responses = list(pool.map(lambda pb: requests.post(self.server.rest + pb[0].format(model=self.model), data=pb[1], timeout=30), bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [rest_answer(api, r) for r in responses]

    def rows_run(self) -> int:
        totals = self.server.batching_totals()
        return totals.get(f"{self.model}/1/serving_default", {}).get("rows", 0)


TRANSPORTS = ["grpc-native", "grpc-aio", "rest-v1", "rest-v2"]


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "lone"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("why", ["expired", "gone"])
def test_dead_requests_never_reach_the_model(servers, transport, grouped, why):
    if transport == "grpc-native" and not NATIVE_BUILT:
        pytest.skip("built without libgrpc++: no native transport")
    case = Case(servers, transport, grouped)
    doomed = case.send_doomed(why)
    case.kill(doomed, why)
    answers = case.fill()
    assert answers == [0.5 * x + 2 for x in range(FILLERS)]
    assert case.rows_run() == FILLERS  # the batch closed full, and only the fillers' rows ran
