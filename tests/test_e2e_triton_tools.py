"""Triton's own tools against fastserve: tritonclient's model configuration, statistics and
shared memory calls, and perf_analyzer (from the tritonclient wheel) in triton mode over
gRPC and HTTP (with and without system shared memory) and in tfserving mode, for models
with FP32, INT64, BOOL and BYTES inputs.

perf_analyzer links libb64 (Debian's libb64-0d) and the CUDA runtime (the PyPI package
nvidia-cuda-runtime-cu12, found through LD_LIBRARY_PATH): scripts/install.sh installs both.
"""
import os
import queue
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import EXAMPLE_MODELS
from tests.test_e2e_metrics import scrape, value

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("triton") / "models.yaml"
    path.write_text(
        "models:\n"
        f"  - name: half_plus_two\n    base_path: {EXAMPLE_MODELS / 'half_plus_two'}\n"
        "    version_policy: {all: {}}\n"
        "    batching: {max_batch_size: 8, batch_timeout_micros: 1000, allowed_batch_sizes: [4, 8], max_enqueued_batches: 100}\n"
        "    devices: ['CPU:0']\n    instances_per_device: 2\n"
        f"  - {{name: multi_io, base_path: {EXAMPLE_MODELS / 'multi_io'}}}\n"
        f"  - {{name: bool_mask, base_path: {EXAMPLE_MODELS / 'bool_mask'}}}\n"
    )
    return path


@pytest.fixture(scope="module")
def server(start_server, config):
    return start_server([f"--config={config}"])


EXPECTED_HALF_PLUS_TWO = {
    "name": "half_plus_two",
    "platform": "tensorflow_savedmodel",
    "backend": "tensorflow",
    "max_batch_size": 8,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],  # [-1, 1] less its batch dimension
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}],
    "instance_group": [{"name": "half_plus_two_cpu_0", "kind": "KIND_CPU", "count": 2}],
    "version_policy": {"all": {}},
    "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 1000},
}


def test_model_config_over_http_and_grpc(server):
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    assert http.get_model_config("half_plus_two") == EXPECTED_HALF_PLUS_TWO
    assert http.get_model_config("half_plus_two", "1") == EXPECTED_HALF_PLUS_TWO
    assert "model_configuration" in http.get_server_metadata()["extensions"]
    multi_io = http.get_model_config("multi_io")
    assert multi_io["max_batch_size"] == 0  # not batched: dims are whole shapes
    assert multi_io["input"] == [
        {"name": "a", "data_type": "TYPE_FP32", "dims": [-1, 2]},
        {"name": "b", "data_type": "TYPE_INT64", "dims": [-1]},
        {"name": "tag", "data_type": "TYPE_STRING", "dims": [-1]},
    ]
    assert multi_io["instance_group"] == [{"name": "multi_io", "kind": "KIND_MODEL", "count": 1}]
    assert "dynamic_batching" not in multi_io

    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    config = grpc_client.get_model_config("half_plus_two").config
    assert (config.name, config.platform, config.max_batch_size) == ("half_plus_two", "tensorflow_savedmodel", 8)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("x", 11, [1])]  # 11: TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert grpc_client.get_model_config("bool_mask").config.input[0].data_type == 1  # TYPE_BOOL


def test_model_config_of_an_unknown_model(server):
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    with pytest.raises(triton_http.InferenceServerException) as err:
        http.get_model_config("nope")
    assert "nope" in err.value.message()
    with pytest.raises(triton_grpc.InferenceServerException) as err:
        triton_grpc.InferenceServerClient(server.grpc_target).get_model_config("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_v2_grpc_calls_are_counted_under_their_model(server):
    before = value(scrape(server), ":tensorflow:serving:request_count_total", model_name="multi_io", status="OK")
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    client.get_model_metadata("multi_io")
    client.get_model_config("multi_io")
    client.is_model_ready("multi_io")
    assert value(scrape(server), ":tensorflow:serving:request_count_total", model_name="multi_io", status="OK") == before + 3


def infer_half_plus_two(client, module, rows: int):
    x = module.InferInput("x", [rows, 1], "FP32")
    x.set_data_from_numpy(np.arange(rows, dtype=np.float32).reshape(rows, 1))
    return client.infer("half_plus_two", [x])


def test_statistics(server):
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    before = http.get_inference_statistics("half_plus_two")["model_stats"][0]
    for rows in (1, 2, 3):
        infer_half_plus_two(http, triton_http, rows)
        infer_half_plus_two(grpc_client, triton_grpc, rows)
    bad = triton_http.InferInput("x", [1, 1], "INT64")  # the model takes FP32
    bad.set_data_from_numpy(np.zeros((1, 1), np.int64))
    with pytest.raises(triton_http.InferenceServerException):
        http.infer("half_plus_two", [bad])

    after = http.get_inference_statistics("half_plus_two", "1")["model_stats"][0]
    assert (after["name"], after["version"]) == ("half_plus_two", "1")
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == 6
    assert stats["fail"]["count"] - old["fail"]["count"] == 1
    assert after["inference_count"] - before["inference_count"] == 12  # rows
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[part]["count"] - old[part]["count"] == 6, part
        assert stats[part]["ns"] > old[part]["ns"], part
    assert stats["success"]["ns"] - old["success"]["ns"] >= stats["compute_infer"]["ns"] - old["compute_infer"]["ns"]
    assert after["execution_count"] - before["execution_count"] in range(3, 7)  # requests may share a batch
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert sum(sizes.values()) == after["execution_count"] and set(sizes) <= set(range(1, 9))
    assert after["last_inference"] > 0

    grpc_stats = grpc_client.get_inference_statistics("half_plus_two").model_stats[0]
    assert grpc_stats.inference_stats.success.count >= stats["success"]["count"]
    every = http.get_inference_statistics()["model_stats"]
    assert {(m["name"], m["version"]) for m in every} == {("half_plus_two", "1"), ("multi_io", "1"), ("bool_mask", "1")}
    with pytest.raises(triton_http.InferenceServerException) as err:
        http.get_inference_statistics("nope")
    assert "nope" in err.value.message()
    with pytest.raises(triton_grpc.InferenceServerException) as err:
        grpc_client.get_inference_statistics("half_plus_two", "7")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def perf_analyzer_runs() -> str | None:
    """Why perf_analyzer cannot run here, or None."""
    if not PERF_ANALYZER.exists():
        return "no perf_analyzer in the environment (tritonclient's wheel ships it)"
    try:
        import nvidia.cuda_runtime
    except ImportError:
        return "nvidia-cuda-runtime-cu12 is not installed"
    env = {**os.environ, "LD_LIBRARY_PATH": str(Path(nvidia.cuda_runtime.__path__[0]) / "lib")}
    missing = subprocess.run(["ldd", str(PERF_ANALYZER)], capture_output=True, text=True, env=env).stdout
    if "not found" in missing:
        return "perf_analyzer's libraries are missing: " + " ".join(re.findall(r"(\S+) => not found", missing))
    return None


MODELS = {  # model -> perf_analyzer's shape arguments (dimensions the config leaves free)
    "half_plus_two": ["-b", "2"],
    "multi_io": ["--shape", "a:1,2", "--shape", "b:1", "--shape", "tag:1"],
    "bool_mask": ["--shape", "flag:3", "--shape", "x:3"],
}


@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
@pytest.mark.parametrize("mode", ["triton-grpc", "triton-http", "triton-http-json", "triton-grpc-shm", "triton-http-shm",
                                  "tfserving-grpc"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_perf_analyzer(server, mode, model):
    why = perf_analyzer_runs()
    if why:
        pytest.skip(why)
    import nvidia.cuda_runtime

    kind, protocol, *variant = mode.split("-")
    port = server.grpc_port if protocol == "grpc" else server.rest_port
    command = [str(PERF_ANALYZER), "-m", model, "-u", f"127.0.0.1:{port}", "-i", protocol, f"--service-kind={kind}",
               "--measurement-interval", "300", "--max-trials", "3", "--stability-percentage", "999", *MODELS[model]]
    if variant == ["shm"]:  # inputs and outputs in system shared memory regions perf_analyzer registers
        command += ["--shared-memory", "system"]
    if variant == ["json"]:  # JSON tensors instead of the binary extension
        if model == "bool_mask":
            pytest.skip("perf_analyzer 2.41 writes random BOOL data as JSON null, and a [3] tensor of zeros as one "
                        "value: requests any V2 server refuses (400)")
        command += ["--input-tensor-format=json", "--output-tensor-format=json"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(Path(nvidia.cuda_runtime.__path__[0]) / "lib")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Unable to" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    throughput = float(re.search(r"throughput: ([\d.]+) infer/sec", result.stdout).group(1))
    assert throughput > 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory(server, protocol):
    """tritonclient's shared memory utilities: inputs read from a region, outputs written to one."""
    import tritonclient.utils.shared_memory as shm

    module = triton_http if protocol == "http" else triton_grpc
    client = (triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}") if protocol == "http"
              else triton_grpc.InferenceServerClient(server.grpc_target))
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    inputs_region = shm.create_shared_memory_region(f"in_{protocol}", f"/fastserve_test_in_{protocol}", 64)
    outputs_region = shm.create_shared_memory_region(f"out_{protocol}", f"/fastserve_test_out_{protocol}", 64)
    try:
        shm.set_shared_memory_region(inputs_region, [x])
        client.register_system_shared_memory(f"in_{protocol}", f"/fastserve_test_in_{protocol}", 64)
        client.register_system_shared_memory(f"out_{protocol}", f"/fastserve_test_out_{protocol}", 64, offset=0)
        status = client.get_system_shared_memory_status()
        names = {r["name"] for r in status} if protocol == "http" else set(status.regions)
        assert {f"in_{protocol}", f"out_{protocol}"} <= names

        tensor = module.InferInput("x", [3, 1], "FP32")
        tensor.set_shared_memory(f"in_{protocol}", x.nbytes)
        wanted = module.InferRequestedOutput("y") if protocol == "grpc" else module.InferRequestedOutput("y", binary_data=True)
        wanted.set_shared_memory(f"out_{protocol}", 12, offset=4)
        result = client.infer("half_plus_two", [tensor], outputs=[wanted])
        output = result.get_output("y")
        size = output["parameters"]["shared_memory_byte_size"] if protocol == "http" else output.parameters["shared_memory_byte_size"].int64_param
        assert size == 12
        y = shm.get_contents_as_numpy(outputs_region, np.float32, [3, 1], offset=4)
        assert y.tolist() == [[2.5], [3.0], [3.5]]

        # clear errors: an unknown region, a size beyond the region, a duplicate name
        tensor.set_shared_memory("nope", x.nbytes)
        with pytest.raises(module.InferenceServerException) as err:
            client.infer("half_plus_two", [tensor])
        assert "unable to find shared memory region 'nope'" in err.value.message()
        tensor.set_shared_memory(f"in_{protocol}", 12, offset=60)
        with pytest.raises(module.InferenceServerException) as err:
            client.infer("half_plus_two", [tensor])
        assert "is beyond the 64 bytes" in err.value.message()
        with pytest.raises(module.InferenceServerException) as err:
            client.register_system_shared_memory(f"in_{protocol}", f"/fastserve_test_in_{protocol}", 64)
        assert "already registered" in err.value.message()
        with pytest.raises(module.InferenceServerException) as err:
            client.register_system_shared_memory("bad", "/../etc/passwd", 8)
        assert "is not a shm_open name" in err.value.message()
    finally:
        client.unregister_system_shared_memory(f"in_{protocol}")
        client.unregister_system_shared_memory(f"out_{protocol}")
        shm.destroy_shared_memory_region(inputs_region)
        shm.destroy_shared_memory_region(outputs_region)
    status = client.get_system_shared_memory_status()
    assert not ({r["name"] for r in status} if protocol == "http" else set(status.regions)) & {f"in_{protocol}", f"out_{protocol}"}


# ---------------------------------------------------------------- streaming

@pytest.fixture(scope="module")
def aio_server(start_server, config):
    return start_server([f"--config={config}", "--grpc_transport=aio"])


@pytest.fixture(params=["native", "aio"])
def either(request):
    """The module's server (native transport where built) or the grpc.aio one."""
    return request.getfixturevalue("server" if request.param == "native" else "aio_server")


def stream_half_plus_two(target: str, count: int, bad_at: int | None = None) -> list:
    """(result, error) of `count` requests (and a bad one after request bad_at) on one stream."""
    results: queue.Queue = queue.Queue()
    client = triton_grpc.InferenceServerClient(target)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(count):
            x = triton_grpc.InferInput("x", [1, 1], "FP32")
            x.set_data_from_numpy(np.array([[float(i)]], np.float32))
            client.async_stream_infer("half_plus_two", [x], request_id=str(i))
            if i == bad_at:
                bad = triton_grpc.InferInput("x", [1, 1], "INT64")
                bad.set_data_from_numpy(np.array([[1]], np.int64))
                client.async_stream_infer("half_plus_two", [bad], request_id="bad")
        return [results.get(timeout=30) for _ in range(count + (bad_at is not None))]
    finally:
        client.stop_stream()


def test_model_stream_infer(either):
    """Requests answered in order on one stream; an error is a message, and the stream goes on."""
    answers = stream_half_plus_two(either.grpc_target, 200, bad_at=100)
    errors = [error for _, error in answers if error is not None]
    assert len(errors) == 1 and "does not match the model's FP32" in errors[0].message()
    values = [(result.get_response().id, result.as_numpy("y").item()) for result, error in answers if error is None]
    assert values == [(str(i), 0.5 * i + 2) for i in range(200)]  # in the order sent


def test_many_streams_at_once(either):
    with ThreadPoolExecutor(8) as pool:
        for answers in pool.map(lambda _: stream_half_plus_two(either.grpc_target, 50), range(8)):
            assert [e.message() for _, e in answers if e] == []
            assert [result.as_numpy("y").item() for result, _ in answers] == [0.5 * i + 2 for i in range(50)]


@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
@pytest.mark.parametrize("model", sorted(MODELS))
def test_perf_analyzer_streaming(either, model):
    why = perf_analyzer_runs()
    if why:
        pytest.skip(why)
    import nvidia.cuda_runtime

    command = [str(PERF_ANALYZER), "-m", model, "-u", either.grpc_target, "-i", "grpc", "--streaming",
               "--concurrency-range", "4", "--measurement-interval", "300", "--max-trials", "3",
               "--stability-percentage", "999", *MODELS[model]]
    env = {**os.environ, "LD_LIBRARY_PATH": str(Path(nvidia.cuda_runtime.__path__[0]) / "lib")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert float(re.search(r"throughput: ([\d.]+) infer/sec", result.stdout).group(1)) > 0


def test_a_cancelled_stream_leaves_the_server_serving(either):
    client = triton_grpc.InferenceServerClient(either.grpc_target)
    client.start_stream(callback=lambda result, error: None)
    for i in range(300):
        x = triton_grpc.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[float(i)]], np.float32))
        client.async_stream_infer("half_plus_two", [x])
    client.stop_stream(cancel_requests=True)  # with answers still on their way
    answers = stream_half_plus_two(either.grpc_target, 20)
    assert [result.as_numpy("y").item() for result, _ in answers] == [0.5 * i + 2 for i in range(20)]
    assert "Traceback" not in either.log()


def test_a_tensor_proto_with_a_shape_and_no_values_is_zeros(server):
    """As TensorFlow (and so TF Serving) reads it; perf_analyzer's tfserving mode sends such tensors."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2), tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.0], [2.0]]
