"""End to end: OpenTelemetry tracing against a real OTLP gRPC receiver that the test starts.

A request that sends a W3C `traceparent` (an HTTP header, or gRPC metadata) yields, in the
caller's trace: the request's span (a child of the caller's span), its queue span, and the
batch span (linked to every request it ran), with model, version and batch size. A caller
that says "not sampled" gets no spans.
"""
import concurrent.futures
import secrets
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import EXAMPLE_MODELS, free_port


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span it is sent."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # the OTLP service's method name
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str, names: set[str], timeout: float = 20) -> dict:
        """{name: [spans]} of one trace once it holds spans of every name in `names`."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = {}
                for span in self.spans:
                    if span.trace_id.hex() == trace_id:
                        found.setdefault(span.name, []).append(span)
            if names <= set(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture(scope="module")
def env(start_server, tmp_path_factory):
    receiver = Receiver()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    config = tmp_path_factory.mktemp("tracing") / "models.yaml"
    config.write_text(f"""
server:
  tracing: {{endpoint: "127.0.0.1:{port}", sample_rate: 1.0}}
models:
  - name: batched
    base_path: {EXAMPLE_MODELS / "half_plus_two"}
    batching: {{max_batch_size: 8, batch_timeout_micros: 20000}}
  - name: plain
    base_path: {EXAMPLE_MODELS / "half_plus_two"}
""")
    fastserve = start_server([f"--config={config}"], env={"OTEL_BSP_SCHEDULE_DELAY": "100"})  # export every 0.1 s
    yield fastserve, receiver
    server.stop(0)


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def attributes(span) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def grpc_predict(server, model: str, metadata) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    prediction_service_pb2_grpc.PredictionServiceStub(server.channel()).Predict(request, timeout=30, metadata=metadata)


def test_a_traced_rest_request_yields_request_queue_and_batch_spans_in_the_callers_trace(env):
    server, receiver = env
    header, trace_id, parent_id = traceparent()
    response = requests.post(f"{server.rest}/v1/models/batched:predict", json={"instances": [[1.0]]},
                             headers={"traceparent": header}, timeout=30)
    assert response.json() == {"predictions": [[2.5]]}
    spans = receiver.of_trace(trace_id, {"Predict", "queue", "batch"})
    (request,), (queue,), (batch,) = spans["Predict"], spans["queue"], spans["batch"]
    assert request.parent_span_id.hex() == parent_id
    assert queue.parent_span_id == request.span_id
    assert [link.span_id for link in batch.links] == [request.span_id]
    assert attributes(request)["fastserve.model"] == "batched" and attributes(request)["fastserve.version"] == 1
    assert attributes(request)["rpc.grpc.status_code"] == "OK"
    assert attributes(batch)["fastserve.batch_size"] == 1 and attributes(batch)["fastserve.model"] == "batched"
    assert request.start_time_unix_nano <= queue.start_time_unix_nano <= queue.end_time_unix_nano <= batch.start_time_unix_nano
    assert batch.end_time_unix_nano <= request.end_time_unix_nano
    assert abs(request.start_time_unix_nano / 1e9 - time.time()) < 60  # on the wall clock


def test_requests_batched_together_share_one_batch_span_linked_to_each(env):
    server, receiver = env
    parents = [traceparent() for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda p: grpc_predict(server, "batched", (("traceparent", p[0]),)), parents))
    # a batch span is in the trace of the first request it ran, linked to all of them
    deadline = time.monotonic() + 20
    while True:
        traces = [receiver.of_trace(trace_id, {"Predict", "queue"}) for _, trace_id, _ in parents]
        batches = {b.span_id: b for t in traces for b in t.get("batch", [])}
        linked = {link.span_id for b in batches.values() for link in b.links}
        if linked == {t["Predict"][0].span_id for t in traces} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert linked == {t["Predict"][0].span_id for t in traces}  # each request linked from the batch that ran it
    assert sum(attributes(b)["fastserve.batch_size"] for b in batches.values()) == 3
    for spans, (_, _, parent_id) in zip(traces, parents):
        (request,) = spans["Predict"]
        assert request.parent_span_id.hex() == parent_id
        assert attributes(request)["fastserve.protocol"] == "GRPC"


def test_an_unbatched_model_traces_its_wait_and_run_and_errors_are_marked(env):
    server, receiver = env
    header, trace_id, _ = traceparent()
    grpc_predict(server, "plain", (("traceparent", header),))
    spans = receiver.of_trace(trace_id, {"Predict", "queue", "batch"})
    assert attributes(spans["batch"][0])["fastserve.model"] == "plain"
    header, trace_id, _ = traceparent()
    bad = requests.post(f"{server.rest}/v1/models/plain:predict", json={"instances": [["a string"]]},
                        headers={"traceparent": header}, timeout=30)
    assert bad.status_code == 400
    (request,) = receiver.of_trace(trace_id, {"Predict"})["Predict"]
    assert attributes(request)["rpc.grpc.status_code"] == "INVALID_ARGUMENT" and request.status.code == 2  # STATUS_CODE_ERROR


def test_a_caller_that_does_not_sample_gets_no_spans(env):
    server, receiver = env
    header, trace_id, _ = traceparent(sampled=False)
    requests.post(f"{server.rest}/v1/models/batched:predict", json={"instances": [[1.0]]}, headers={"traceparent": header},
                  timeout=30).raise_for_status()
    sampled, sampled_id, _ = traceparent()  # sent after it: once its spans arrive, the other's would have too
    requests.post(f"{server.rest}/v1/models/batched:predict", json={"instances": [[1.0]]}, headers={"traceparent": sampled},
                  timeout=30).raise_for_status()
    assert receiver.of_trace(sampled_id, {"Predict", "batch"})
    assert receiver.of_trace(trace_id, set(), timeout=0) == {}
