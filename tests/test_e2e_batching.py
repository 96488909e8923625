"""End to end: dynamic batching in the real server, over REST and gRPC.

The test model is a small dense layer that also outputs, for every row, the number
of rows in the call that computed it, so a client can see the batches it was part of.
"""
import concurrent.futures
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import EXAMPLE_MODELS, REPO, rest_predict

WIDTH = 8


def export_batch_revealing_model(path):
    weights = tf.constant(np.random.default_rng(7).normal(size=(WIDTH, 3)).astype(np.float32))

    class Dense(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="x")])
        def serve(self, x):
            rows = tf.shape(x)[0]
            return {"y": tf.nn.tanh(tf.matmul(x, weights)), "batch_size": tf.fill([rows], tf.cast(rows, tf.int64))}

    module = Dense()
    tf.saved_model.save(module, str(path / "1"), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("batching") / "dense"
    export_batch_revealing_model(base)
    return base


@pytest.fixture(scope="module")
def server(start_server, model_dir, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "models.yaml"
    config.write_text(
        f"""
server:
  cpu_devices: 2
models:
  - name: pinned
    base_path: {model_dir}
    runtime: function
    devices: [CPU:0, CPU:1]
    batching: {{max_batch_size: 8, batch_timeout_micros: 5000}}
  - name: plain
    base_path: {model_dir}
  - name: batched
    base_path: {model_dir}
    batching: {{max_batch_size: 32, batch_timeout_micros: 30000, num_batch_threads: 1}}
  - name: small
    base_path: {model_dir}
    batching: {{max_batch_size: 4}}
  - name: split
    base_path: {model_dir}
    batching: {{max_batch_size: 16, enable_large_batch_splitting: true, max_execution_batch_size: 4, allowed_batch_sizes: [2, 4]}}
  - name: multi_io
    base_path: {EXAMPLE_MODELS / "multi_io"}
  - name: multi_io_batched
    base_path: {EXAMPLE_MODELS / "multi_io"}
    batching: {{max_batch_size: 16, batch_timeout_micros: 20000, num_batch_threads: 1}}
"""
    )
    return start_server([f"--config={config}"])


def rows(n, seed):
    return np.random.default_rng(seed).normal(size=(n, WIDTH)).astype(np.float32)


def assert_equal_within_rounding(got, expected):
    """Batched answers equal unbatched ones to float rounding: the matmul kernels for different
    batch sizes may round differently, by a few float32 ULPs of the outputs' scale (tanh: 1)."""
    ulps = 8 * float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=ulps, atol=ulps * 1.0)


def grpc_predict(stub, model, x):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return stub.Predict.future(request, timeout=30)


def test_concurrent_rest_requests_form_batches_with_unbatched_results(server):
    inputs = [rows(1 + i % 3, seed=i) for i in range(32)]

    def ask(model, x):
        response = rest_predict(server, model, {"inputs": {"x": x.tolist()}})
        assert response.status_code == 200, response.text
        out = response.json()["outputs"]
        return np.array(out["y"], np.float32), out["batch_size"]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        batched = list(pool.map(lambda x: ask("batched", x), inputs))
    plain = [ask("plain", x) for x in inputs]
    for (y_batched, _), (y_plain, sizes) in zip(batched, plain):
        assert_equal_within_rounding(y_batched, y_plain)
        assert set(sizes) == {len(y_plain)}  # unbatched: the model saw just this request
    seen = [size for _, sizes in batched for size in sizes]
    assert max(seen) > 3  # rows of several requests went through one call
    assert max(seen) <= 32


def test_concurrent_grpc_requests_form_batches_with_unbatched_results(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    inputs = [rows(2, seed=100 + i) for i in range(24)]
    batched = [grpc_predict(stub, "batched", x) for x in inputs]
    batched = [f.result() for f in batched]
    for x, response in zip(inputs, batched):
        plain = grpc_predict(stub, "plain", x).result()
        assert_equal_within_rounding(tf.make_ndarray(response.outputs["y"]), tf.make_ndarray(plain.outputs["y"]))
    assert max(tf.make_ndarray(r.outputs["batch_size"]).max() for r in batched) > 2


def test_strings_and_several_inputs_batch_like_they_run_alone(server):
    bodies = [
        {"instances": [{"a": [i, 2.0], "b": i, "tag": f"tag{i}" * (i % 3 + 1)}, {"a": [0.5, -i], "b": -i, "tag": "x"}]}
        for i in range(12)
    ]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        batched = list(pool.map(lambda body: rest_predict(server, "multi_io_batched", body), bodies))
    for body, response in zip(bodies, batched):
        assert response.status_code == 200, response.text
        assert response.json() == rest_predict(server, "multi_io", body).json()


def test_model_pinned_to_logical_cpu_devices_serves(server):
    assert "TensorFlow devices: /device:CPU:0, /device:CPU:1" in server.log()
    x = rows(3, seed=9)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda m: rest_predict(server, m, {"inputs": {"x": x.tolist()}}).json()["outputs"], ["pinned"] * 8 + ["plain"]))
    for out in outs[:-1]:
        assert_equal_within_rounding(out["y"], outs[-1]["y"])


def test_request_larger_than_max_batch_size_is_rejected(server):
    response = rest_predict(server, "small", {"inputs": {"x": rows(5, seed=1).tolist()}})
    assert response.status_code == 400
    assert response.json() == {"error": "Task size 5 is larger than maximum input batch size 4"}
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(stub, "small", rows(5, seed=1)).result()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rest_predict(server, "small", {"inputs": {"x": rows(4, seed=1).tolist()}}).status_code == 200


def test_large_request_is_split_into_execution_batches(server):
    x = rows(11, seed=3)
    response = rest_predict(server, "split", {"inputs": {"x": x.tolist()}})
    assert response.status_code == 200, response.text
    out = response.json()["outputs"]
    plain = rest_predict(server, "plain", {"inputs": {"x": x.tolist()}}).json()["outputs"]
    assert_equal_within_rounding(out["y"], plain["y"])
    assert max(out["batch_size"]) == 4  # pieces of at most max_execution_batch_size
    assert out["batch_size"][-1] == 4  # the last 3 rows were padded up to an allowed size


def test_batching_flags_like_tf_serving(start_server, model_dir, tmp_path):
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 50000 }\nnum_batch_threads { value: 1 }\n")
    server = start_server(["--model_name=dense", f"--model_base_path={model_dir}", "--enable_batching", f"--batching_parameters_file={params}"])
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda i: rest_predict(server, "dense", {"inputs": {"x": rows(1, seed=i).tolist()}}).json(), range(16)))
    assert max(o["outputs"]["batch_size"][0] for o in outs) > 1


def test_batching_parameters_file_needs_enable_batching(tmp_path):
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 8 }\n")
    result = subprocess.run(
        [sys.executable, "-m", "fastserve", "--model_base_path=/nowhere", f"--batching_parameters_file={params}"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2
    assert "batching_parameters_file is set without setting server_options.enable_batching to true" in result.stderr
    params.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    result = subprocess.run(
        [sys.executable, "-m", "fastserve", "--model_base_path=/nowhere", "--enable_batching", f"--batching_parameters_file={params}"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2
    assert "allowed_batch_sizes: the final entry (4) must equal max_batch_size (8)" in result.stderr
