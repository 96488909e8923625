"""Custom ops from pip packages: a model using tensorflow-text's NormalizeUTF8 op fails to load
without the settings (its error names the op) and serves, over REST and gRPC, once
`--import_modules=tensorflow_text` or `server.custom_op_libraries` has registered the op."""
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import ServerProcess

# The op library tensorflow_text loads for normalize_utf8: loaded on its own by path.
NORMALIZE_OPS = Path(tf_text.__file__).parent / "python" / "ops" / "_normalize_ops.so"


class _Normalizer(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def normalize(self, text):
        return {"normalized": tf_text.normalize_utf8(text, "NFKC")}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "normalizer"
    module = _Normalizer()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.normalize})
    return base


def _predict_rest(server):
    response = requests.post(f"{server.rest}/v1/models/normalizer:predict", json={"instances": ["ﬁ①", "Ａb"]}, timeout=30)
    return response.status_code, response.json()


def test_without_the_settings_the_load_error_names_the_op(start_server, model_dir):
    server = start_server(["--model_name=normalizer", f"--model_base_path={model_dir}", "--max_num_load_retries=0"])
    status = requests.get(f"{server.rest}/v1/models/normalizer", timeout=30).json()["model_version_status"][0]
    assert status["state"] == "END"
    assert "Op type not registered 'NormalizeUTF8'" in status["status"]["error_message"]
    code, body = _predict_rest(server)
    assert code == 404, body


def test_import_modules_serves_it_over_rest_and_grpc(start_server, model_dir):
    server = start_server(["--model_name=normalizer", f"--model_base_path={model_dir}", "--import_modules=tensorflow_text"])
    assert _predict_rest(server) == (200, {"predictions": ["fi1", "Ab"]})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "normalizer"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"\xef\xac\x81"], dtype=object)))  # "ﬁ"
    response = prediction_service_pb2_grpc.PredictionServiceStub(server.channel()).Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["normalized"]).tolist() == [b"fi"]
    assert "imported module tensorflow_text" in server.log()


def test_custom_op_libraries_loads_one_library_by_path(start_server, model_dir, tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text(
        f"server:\n  custom_op_libraries: ['{NORMALIZE_OPS}']\n"
        f"models:\n  - {{name: normalizer, base_path: '{model_dir}'}}\n"
    )
    server = start_server([f"--config={config}"])
    assert _predict_rest(server) == (200, {"predictions": ["fi1", "Ab"]})
    assert f"loaded custom op library {NORMALIZE_OPS}" in server.log()


def test_a_library_that_cannot_load_stops_start_up(model_dir, tmp_path):
    server = ServerProcess(
        ["--model_name=normalizer", f"--model_base_path={model_dir}", f"--custom_op_libraries={tmp_path / 'missing.so'}"],
        tmp_path / "fastserve.log",
    )
    assert server.proc.wait(timeout=120) == 2
    server.stop()
    assert f"server.custom_op_libraries: cannot load {tmp_path / 'missing.so'}" in server.log()
