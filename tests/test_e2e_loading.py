"""Loading: TF Serving's model_config_file, the function runtime, and models that fail to load."""
import grpc
import pytest
import requests
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from tests.conftest import EXAMPLE_MODELS, TESTDATA, rest_predict


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    corrupt = root / "corrupt" / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "saved_model.pb").write_bytes(b"this is not a protobuf")
    models = [
        ("tf2_session", EXAMPLE_MODELS / "half_plus_two", "session"),
        ("tf2_function", EXAMPLE_MODELS / "half_plus_two", "function"),
        ("tf2_auto", EXAMPLE_MODELS / "half_plus_two", "auto"),
        ("multi_io_function", EXAMPLE_MODELS / "multi_io", "function"),
        ("corrupt", root / "corrupt", "session"),
        ("missing", root / "does_not_exist", "session"),
    ]
    if TESTDATA.is_dir():
        models.append(("bad_half_plus_two", TESTDATA / "bad_half_plus_two", "session"))
    config = root / "models.yaml"
    config.write_text("models:\n" + "".join(f"  - {{name: {n}, base_path: '{p}', runtime: {r}}}\n" for n, p, r in models))
    return start_server([f"--config={config}", "--max_num_load_retries=0"])


def status(server, name):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return model_service_pb2_grpc.ModelServiceStub(server.channel()).GetModelStatus(request, timeout=30)


def test_both_runtimes_give_the_same_answers(server):
    for name in ("tf2_session", "tf2_function"):
        assert rest_predict(server, name, {"instances": [[2.0], [4.0]]}).json() == {"predictions": [[3.0], [4.0]]}


def test_the_runtime_of_each_version_is_logged_and_exported(server):
    log = server.log()
    assert "model tf2_auto version 1: session runtime (it loads and answers on it)" in log
    assert "model tf2_function version 1: function runtime (as configured)" in log
    metrics = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=30).text
    for model, runtime in (("tf2_auto", "session"), ("tf2_session", "session"), ("tf2_function", "function")):
        assert f'fastserve_model_runtime{{model="{model}",runtime="{runtime}",version="1"}} 1.0' in metrics


def test_function_runtime_reports_errors_as_invalid_argument(server):
    body = {"inputs": {"a": [[1.0, 1.0], [2.0, 2.0]], "b": [1, 2, 3], "tag": ["x"]}}
    response = rest_predict(server, "multi_io_function", body)
    assert response.status_code == 400
    assert "Incompatible shapes" in response.json()["error"]
    body["inputs"]["b"] = [1, 2]
    assert rest_predict(server, "multi_io_function", body).json()["outputs"]["sum"] == [3.0, 6.0]


def test_corrupt_model_reports_its_load_error(server):
    [version] = status(server, "corrupt").model_version_status
    assert version.version == 1
    assert version.state == get_model_status_pb2.ModelVersionStatus.END
    assert version.status.error_code != 0
    assert "corrupt" in version.status.error_message or "SavedModel" in version.status.error_message
    body = requests.get(f"{server.rest}/v1/models/corrupt", timeout=30).json()
    assert body["model_version_status"][0]["state"] == "END"
    assert body["model_version_status"][0]["status"]["error_message"] == version.status.error_message
    assert "model corrupt version 1: END" in server.log()
    response = rest_predict(server, "corrupt", {"instances": [[1.0]]})
    assert response.status_code == 404


@pytest.mark.skipif(not TESTDATA.is_dir(), reason="../shared/testdata is absent")
def test_bad_half_plus_two_fails_clearly_and_others_serve(server):
    [version] = status(server, "bad_half_plus_two").model_version_status
    assert version.version == 123
    assert version.state == get_model_status_pb2.ModelVersionStatus.END
    assert version.status.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "not a SavedModel" in version.status.error_message
    assert "model bad_half_plus_two version 123: END" in server.log()
    assert rest_predict(server, "tf2_session", {"instances": [[2.0]]}).json() == {"predictions": [[3.0]]}


def test_missing_base_path_is_logged_and_others_serve(server):
    assert "model missing: Could not find base path" in server.log()
    with pytest.raises(grpc.RpcError) as err:
        status(server, "missing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert rest_predict(server, "tf2_session", {"instances": [[2.0]]}).status_code == 200


def test_model_config_file_and_grpc_socket(start_server, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        f"  config {{ name: 'two' base_path: '{EXAMPLE_MODELS / 'half_plus_two'}' model_platform: 'tensorflow' }}\n"
        f"  config {{ name: 'three' base_path: '{EXAMPLE_MODELS / 'half_plus_three'}' }}\n"
        "}\n"
    )
    socket_path = tmp_path / "grpc.sock"
    server = start_server([f"--model_config_file={config}", f"--grpc_socket_path={socket_path}"])
    assert rest_predict(server, "two", {"instances": [[2.0]]}).json() == {"predictions": [[3.0]]}
    assert rest_predict(server, "three", {"instances": [[2.0]]}).json() == {"predictions": [[4.0]]}
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "three"
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    assert response.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
