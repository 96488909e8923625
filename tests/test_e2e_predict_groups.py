"""Grouped Predict on the native transport: the same answers as one call at a time.

The native gRPC transport hands the pipeline every Predict call that arrived together;
those that agree are served as groups (fastserve/pipeline/pipeline.py), while grpc.aio
hands over one call at a time. Here one mixed burst of calls — many
models, dtypes, row counts, encodings, output filters, labels, and calls that must fail —
goes at once to a native server and, for reference, to a grpc.aio server (per-call path)
with the same models. Every call must get the same status, message and response from both,
and the native server's batch queues must show that calls really were grouped.
"""
import random

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT
from tests.conftest import EXAMPLE_MODELS
from tests.test_e2e_metrics import scrape, value

pytestmark = pytest.mark.skipif(not NATIVE_BUILT, reason="built without libgrpc++: no native transport")

MAX_BATCH = 16


@pytest.fixture(scope="module")
def servers(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    batching = f"{{max_batch_size: {MAX_BATCH}, batch_timeout_micros: 20000, max_enqueued_batches: 1000}}"
    config = root / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: half_plus_two, base_path: {EXAMPLE_MODELS / 'half_plus_two'}, batching: {batching},"
        " version_labels: {stable: 1}}\n"
        f"  - {{name: multi_io, base_path: {EXAMPLE_MODELS / 'multi_io'}, batching: {batching}}}\n"
        f"  - {{name: bool_mask, base_path: {EXAMPLE_MODELS / 'bool_mask'}, batching: {batching}}}\n"
        f"  - {{name: unbatched, base_path: {EXAMPLE_MODELS / 'half_plus_two'}}}\n"
    )
    return {transport: start_server([f"--config={config}", f"--grpc_transport={transport}"]) for transport in ("native", "aio")}


def request(model: str, inputs: dict, *, signature: str = "", version: int | None = None, label: str = "",
            output_filter=(), typed_values: bool = False) -> predict_pb2.PredictRequest:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = model
    r.model_spec.signature_name = signature
    if version is not None:
        r.model_spec.version.value = version
    if label:
        r.model_spec.version_label = label
    r.output_filter.extend(output_filter)
    for name, array in inputs.items():
        proto = r.inputs[name]
        proto.CopyFrom(tf.make_tensor_proto(array))
        if typed_values and proto.dtype == tf.float32.as_datatype_enum:  # float_val instead of tensor_content
            proto.ClearField("tensor_content")
            proto.ClearField("float_val")
            proto.float_val.extend(np.asarray(array, np.float32).reshape(-1).tolist())
    return r


def burst(rng: random.Random) -> list[predict_pb2.PredictRequest]:
    """A shuffled mix of calls that group, calls that cannot, and calls that fail."""
    calls = []
    for i in range(120):
        rows = rng.choice([1, 1, 1, 3])
        x = np.array([[rng.uniform(-100, 100)] for _ in range(rows)], np.float32)
        calls.append(request("half_plus_two", {"x": x}, typed_values=i % 2 == 0))
    for i in range(10):
        x = np.array([[float(i)]], np.float32)
        calls += [request("half_plus_two", {"x": x}, label="stable"), request("half_plus_two", {"x": x}, version=1),
                  request("half_plus_two", {"x": x}, output_filter=["y"]), request("unbatched", {"x": x})]
    for i in range(40):
        rows = rng.choice([1, 2])
        inputs = {
            "a": np.array([[rng.uniform(0, 9), rng.uniform(0, 9)] for _ in range(rows)], np.float32),
            "b": np.array([rng.randrange(-50, 50) for _ in range(rows)], np.int64),
            "tag": np.array([f"row-{i}-{r}".encode() for r in range(rows)], object),
        }
        calls.append(request("multi_io", inputs, output_filter=["sum", "tag_upper"] if i % 4 == 0 else ()))
    for i in range(20):
        calls.append(request("bool_mask", {"flag": np.array([i % 2 == 0, i % 3 == 0]), "x": np.array([i, -i], np.float32)}))
    x = np.array([[1.0]], np.float32)
    calls += [
        request("half_plus_two", {"x": np.array([[1]], np.int64)}),             # wrong dtype
        request("half_plus_two", {"z": x}),                                      # unknown input
        request("half_plus_two", {"x": x}, version=7),                           # no such version
        request("half_plus_two", {"x": x}, label="canary"),                      # no such label
        request("half_plus_two", {"x": x}, signature="nope"),                    # no such signature
        request("half_plus_two", {"x": x}, output_filter=["nope"]),              # no such output
        request("half_plus_two", {"x": np.ones((MAX_BATCH + 1, 1), np.float32)}),  # over max_batch_size
        request("no_such_model", {"x": x}),
        request("multi_io", {"a": np.ones((2, 2), np.float32), "b": np.ones(3, np.int64), "tag": np.array([b"a", b"b"], object)}),
    ]
    rng.shuffle(calls)
    return calls


def outcome(future) -> tuple:
    try:
        return "OK", "", future.result()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details(), None


def send_all(server, calls) -> list[tuple]:
    """All calls at once on one channel, so they reach the server together."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        futures = [stub.Predict.future(call, timeout=60) for call in calls]
        return [outcome(f) for f in futures]


def test_a_burst_gets_the_same_answers_grouped_as_one_call_at_a_time(servers):
    calls = burst(random.Random(7))
    grouped = send_all(servers["native"], calls)
    reference = send_all(servers["aio"], calls)
    for call, got, want in zip(calls, grouped, reference):
        assert got == want, f"{call.model_spec}: native {got[:2]}, aio {want[:2]}"
    codes = [code for code, _, _ in grouped]
    assert codes.count("OK") == len(calls) - 9 and set(codes) == {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"}

    # Each answer is its own call's: y = 0.5 x + 2 row by row.
    for call, (code, _, response) in zip(calls, grouped):
        if code == "OK" and call.model_spec.name == "half_plus_two":
            x = tf.make_ndarray(call.inputs["x"])
            np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]).reshape(-1), 0.5 * x.reshape(-1) + 2, rtol=1e-6)

    # Grouped: the native server queued fewer tasks than it answered calls.
    totals = servers["native"].batching_totals()["half_plus_two/1/serving_default"]
    assert totals["tasks"] < sum(1 for call, (code, _, _) in zip(calls, grouped)
                                 if code == "OK" and call.model_spec.name == "half_plus_two")


def test_grouped_calls_are_counted_in_the_metrics(servers):
    native = servers["native"]
    count = (":tensorflow:serving:request_count_total", {"model_name": "bool_mask", "status": "OK"})
    latency = (":tensorflow:serving:request_latency_count", {"model_name": "bool_mask", "API": "Predict", "entrypoint": "GRPC"})
    before = scrape(native)
    calls = [request("bool_mask", {"flag": np.array([True]), "x": np.array([float(i)], np.float32)}) for i in range(50)]
    assert all(code == "OK" for code, _, _ in send_all(native, calls))
    after = scrape(native)
    for name, labels in (count, latency):
        assert value(after, name, **labels) - value(before, name, **labels) == 50, name
