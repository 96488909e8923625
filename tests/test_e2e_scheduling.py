"""End to end: priorities and queue policies, the latency target and the response cache in
the real server, over REST (TF Serving and V2) and gRPC (TF Serving and V2)."""
import concurrent.futures
import json
import re
import socket
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from fastserve_client import protos
from tests.conftest import rest_predict
from tests.model_builder import export_adder, install_version

POLL = 0.2


class _Busy(tf.Module):
    """y = x, after busy-waiting the longest of the rows' `seconds` (a batchable slow model)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x"), tf.TensorSpec([None], tf.float32, name="seconds")])
    def serve(self, x, seconds):
        deadline = tf.timestamp() + tf.cast(tf.reduce_max(seconds), tf.float64)
        tf.while_loop(lambda t: t < deadline, lambda t: [tf.timestamp()], [tf.timestamp()])
        return {"y": tf.identity(x)}


@pytest.fixture(scope="module")
def env(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("scheduling")
    busy = _Busy()
    tf.saved_model.save(busy, str(root / "busy" / "1"), signatures={"serving_default": busy.serve})
    export_adder(root / "targeted" / "1", 2.0)
    export_adder(root / "cached" / "1", 2.0)
    staged_v2 = export_adder(root / "staging" / "cached_v2", 3.0)
    config = root / "models.yaml"
    config.write_text(f"""
server: {{file_system_poll_wait_seconds: {POLL}}}
models:
  - name: busy
    base_path: {root / "busy"}
    batching:
      max_batch_size: 1
      num_batch_threads: 1
      priority_levels: 2
      default_priority_level: 1
      priority_queue_policy: {{2: {{max_queue_size: 1}}}}
  - name: targeted
    base_path: {root / "targeted"}
    batching: {{max_batch_size: 32, batch_timeout_micros: 500000, target_latency_ms: 200, num_batch_threads: 1}}
  - name: cached
    base_path: {root / "cached"}
    batching: {{max_batch_size: 8}}
    response_cache: {{max_entries: 2}}
""")
    return start_server([f"--config={config}"]), root, staged_v2


def busy_body(seconds: float, x: float = 1.0) -> dict:
    return {"inputs": {"x": [[x]], "seconds": [seconds]}}


def metric(server, name: str, **labels) -> float:
    """The sum of a metric's samples that have these labels."""
    text = requests.get(f"{server.rest}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}{{(.*)}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_a_full_level_is_refused_at_once_on_every_api_while_a_higher_level_is_served(env):
    server, _, _ = env
    channel = server.channel()
    predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    v2 = protos.inference()
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", v2.ModelInferRequest.SerializeToString,
                                v2.ModelInferResponse.FromString)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        holder = pool.submit(rest_predict, server, "busy", busy_body(1.5))  # level 1 (the default) runs 1.5 s
        time.sleep(0.3)
        queued_low = pool.submit(requests.post, f"{server.rest}/v1/models/busy:predict", json=busy_body(0, 2.0),
                                 headers={"Fastserve-Priority": "2"}, timeout=30)  # fills level 2 (1 row)
        time.sleep(0.2)
        started = time.monotonic()
        refused = requests.post(f"{server.rest}/v1/models/busy:predict", json=busy_body(0), headers={"Fastserve-Priority": "2"},
                                timeout=30)
        refused_in = time.monotonic() - started
        # refused from its path and head, before its body is decoded: even a truncated one
        undecoded = requests.post(f"{server.rest}/v1/models/busy:predict", data=b'{"inputs": {"x": [[1.0]], "seconds": [0',
                                  headers={"Fastserve-Priority": "2", "content-type": "application/json"}, timeout=30)
        v2_header = requests.post(f"{server.rest}/v2/models/busy/versions/1/infer", data=b"{", timeout=30,
                                  headers={"Fastserve-Priority": "2", "content-type": "application/json"})
        # a body that names a signature is decoded first (it may name another queue)
        named = requests.post(f"{server.rest}/v1/models/busy:predict", json={"signature_name": "serving_default", **busy_body(0)},
                              headers={"Fastserve-Priority": "2"}, timeout=30)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "busy"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 1), np.float32)))
        request.inputs["seconds"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.float32)))
        with pytest.raises(grpc.RpcError) as grpc_refused:
            predict_stub.Predict(request, timeout=30, metadata=(("fastserve-priority", "2"),))
        v2_rest = requests.post(f"{server.rest}/v2/models/busy/infer", timeout=30, json={
            "parameters": {"priority": 2},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]},
                       {"name": "seconds", "datatype": "FP32", "shape": [1], "data": [0.0]}]})
        v2_request = v2.ModelInferRequest(model_name="busy")
        v2_request.parameters["priority"].int64_param = 2
        v2_request.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
        v2_request.inputs.add(name="seconds", datatype="FP32", shape=[1]).contents.fp32_contents.append(0.0)
        with pytest.raises(grpc.RpcError) as v2_grpc_refused:
            infer(v2_request, timeout=30)
        bad = requests.post(f"{server.rest}/v1/models/busy:predict", json=busy_body(0), headers={"Fastserve-Priority": "high"},
                            timeout=30)
        high = pool.submit(rest_predict, server, "busy", busy_body(0, 3.0))  # level 1: queued, not refused
        assert holder.result().status_code == 200
        assert high.result().json() == {"outputs": [[3.0]]}
        assert queued_low.result().json() == {"outputs": [[2.0]]}
    assert refused.status_code == 429 and refused_in < 0.5  # at once, long before the model is free
    assert "priority level 2 already holds its max_queue_size of 1 rows" in refused.json()["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    for early in (undecoded, v2_header, named):
        assert early.status_code == 429 and "max_queue_size" in early.json()["error"]
    assert grpc_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert v2_rest.status_code == 429 and "max_queue_size" in v2_rest.json()["error"]
    assert v2_grpc_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert bad.status_code == 400 and "priority must be a non-negative integer" in bad.json()["error"]
    assert metric(server, "fastserve_rejected_requests_total", reason="max_queue_size") >= 7


def test_requests_read_together_count_those_ahead_of_them_before_decoding(env):
    """Two priority-2 requests in one read: the first takes the level's one row (not queued yet
    when the second is read), so the second is refused unread, even with a truncated body."""
    server, _, _ = env
    head = "POST /v1/models/busy:predict HTTP/1.1\r\nHost: x\r\nFastserve-Priority: 2\r\nContent-Type: application/json\r\n"
    first = json.dumps(busy_body(0, 4.0)).encode()
    second = b'{"inputs": {"x": [[1.0]], "seconds": [0'
    wire = b"".join(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in (first, second))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = pool.submit(rest_predict, server, "busy", busy_body(1.0))  # level 1 holds the model for 1 s
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
            connection.sendall(wire)
            replies = b""
            while replies.count(b"HTTP/1.1 ") < 2 or not replies.endswith(b"}"):
                chunk = connection.recv(65536)
                assert chunk, replies
                replies += chunk
        assert holder.result().status_code == 200
    answered, refused = replies.split(b"HTTP/1.1 ")[1:]
    assert answered.startswith(b"200") and b'"outputs":[[4.0]]' in answered.replace(b" ", b"")
    assert refused.startswith(b"429") and b"max_queue_size" in refused


def test_with_a_latency_target_a_lone_request_does_not_wait_out_the_batch_timeout(env):
    server, _, _ = env
    for _ in range(5):
        started = time.monotonic()
        response = rest_predict(server, "targeted", {"instances": [[1.0]]})
        assert response.json() == {"predictions": [[3.0]]}
        assert time.monotonic() - started < 0.4  # batch_timeout_micros is 0.5 s
    assert metric(server, "fastserve_batches_total", model="targeted", closed="idle") >= 5
    assert metric(server, "fastserve_batches_total", model="targeted", closed="timeout") == 0


def test_a_repeated_request_is_answered_from_the_cache_and_a_new_version_never_is(env):
    server, root, staged_v2 = env

    def batches():
        return metric(server, "fastserve_batches_total", model="cached")

    assert rest_predict(server, "cached", {"instances": [[1.0]]}).json() == {"predictions": [[3.0]]}
    ran = batches()
    assert rest_predict(server, "cached", {"instances": [[1.0]]}).json() == {"predictions": [[3.0]]}
    assert batches() == ran  # the queue never saw it
    assert metric(server, "fastserve_response_cache_total", model="cached", event="hit") == 1
    assert rest_predict(server, "cached", {"instances": [[5.0]]}).json() == {"predictions": [[7.0]]}  # another input: a miss
    assert batches() == ran + 1
    install_version(staged_v2, root / "cached", 2)
    deadline = time.monotonic() + 30
    while (answer := rest_predict(server, "cached", {"instances": [[1.0]]}).json()) != {"predictions": [[4.0]]}:
        assert answer == {"predictions": [[3.0]]}, answer  # version 1 (cached or not) until version 2 serves
        assert time.monotonic() < deadline, "version 2 never served"
        time.sleep(0.1)
    hits = metric(server, "fastserve_response_cache_total", model="cached", event="hit")
    assert rest_predict(server, "cached", {"instances": [[1.0]]}).json() == {"predictions": [[4.0]]}
    assert metric(server, "fastserve_response_cache_total", model="cached", event="hit") == hits + 1  # version 2's own entry
