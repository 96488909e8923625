"""End to end on both gRPC transports: the streams of the method tables (reflection lists and
describes every service; health Watch follows the status), and health and V2 on grpc.aio as
on the native transport."""
import time

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT
from tests.conftest import EXAMPLE_MODELS


TRANSPORTS = ["native", "aio"] if NATIVE_BUILT else ["aio"]


@pytest.fixture(scope="module", params=TRANSPORTS)
def server(request, start_server):
    return start_server(
        [f"--grpc_transport={request.param}", "--model_name=half_plus_two", f"--model_base_path={EXAMPLE_MODELS / 'half_plus_two'}"],
        rest=False,
    )


def test_reflection_lists_and_describes_services(server):
    database = ProtoReflectionDescriptorDatabase(server.channel())
    services = set(database.get_services())
    assert {
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    pool = descriptor_pool.DescriptorPool(database)
    predict = pool.FindServiceByName("tensorflow.serving.PredictionService").FindMethodByName("Classify")
    assert predict.input_type.full_name == "tensorflow.serving.ClassificationRequest"
    infer = pool.FindServiceByName("inference.GRPCInferenceService").FindMethodByName("ModelInfer")
    assert [f.name for f in infer.input_type.fields][:3] == ["model_name", "model_version", "id"]
    assert pool.FindMessageTypeByName("tensorflow.serving.PredictRequest").fields_by_name["inputs"].number == 2
    with pytest.raises(KeyError):  # answered with an error response: the stream goes on
        pool.FindMessageTypeByName("no.such.Message")
    assert pool.FindServiceByName("grpc.health.v1.Health").FindMethodByName("Check") is not None


def test_health_and_v2_on_aio(server):
    stub = health_pb2_grpc.HealthStub(server.channel())
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    x = triton_grpc.InferInput("x", [2, 1], "FP32")
    x.set_data_from_numpy(np.array([[2.0], [4.0]], np.float32))
    assert client.infer("half_plus_two", [x]).as_numpy("y").tolist() == [[3.0], [4.0]]


def test_health_watch_follows_the_status(server):
    """The status at once, then each change; an unknown service is SERVICE_UNKNOWN, not an error."""
    stub = health_pb2_grpc.HealthStub(server.channel())
    status = health_pb2.HealthCheckResponse
    unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no_such_model"), timeout=30)
    assert next(unknown).status == status.SERVICE_UNKNOWN
    unknown.cancel()
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="half_plus_two"), timeout=60)
    assert next(watch).status == status.SERVING
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    client.unload_model("half_plus_two")
    assert next(watch).status == status.SERVICE_UNKNOWN
    client.load_model("half_plus_two")
    assert next(watch).status == status.SERVING
    watch.cancel()
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == status.SERVING


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_watch_turns_not_serving_on_shutdown_and_does_not_hold_it(start_server, transport):
    server = start_server(
        [f"--grpc_transport={transport}", "--model_name=half_plus_two", f"--model_base_path={EXAMPLE_MODELS / 'half_plus_two'}",
         "--shutdown_grace_seconds=20"],
        rest=False,
    )
    status = health_pb2.HealthCheckResponse
    watch = health_pb2_grpc.HealthStub(server.channel()).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(watch).status == status.SERVING
    started = time.monotonic()
    server.proc.terminate()
    assert next(watch).status == status.NOT_SERVING
    assert server.proc.wait(30) == 0
    assert time.monotonic() - started < 10  # a watch is not an in-flight request the shutdown waits for
