"""Runtime reload: HandleReloadConfigRequest, SIGHUP re-reading models.yaml, config file polling."""
import signal
import time

import grpc
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.load import Load
from tests.model_builder import export_adder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name, offsets in (("a", (1, 2)), ("b", (5,)), ("c", (7,))):
        for version, offset in enumerate(offsets, start=1):
            export_adder(root / name / str(version), offset)
    return root


def reload_request(root, entries) -> model_management_pb2.ReloadConfigRequest:
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()  # present even when empty
    for name, policy, labels in entries:
        model = config.model_config_list.config.add(name=name, base_path=str(root / name), model_platform="tensorflow")
        if policy == "all":
            model.model_version_policy.all.SetInParent()
        for label, version in labels.items():
            model.version_labels[label] = version
    return model_management_pb2.ReloadConfigRequest(config=config)


def predict(server, path):
    return requests.post(f"{server.rest}/v1/models/{path}:predict", json={"instances": [[0.0]]}, timeout=30)


def test_handle_reload_config_request_while_serving(start_server, models, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        f"  config {{ name: 'a' base_path: '{models / 'a'}' model_version_policy {{ all {{}} }} }}\n"
        f"  config {{ name: 'b' base_path: '{models / 'b'}' }}\n"
        "}\n"
    )
    server = start_server([f"--model_config_file={config}", "--file_system_poll_wait_seconds=0"])
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
    assert predict(server, "b").json() == {"predictions": [[5.0]]}
    with Load(server, "a", threads=8) as load:
        time.sleep(0.5)
        # add c, label a, remove b -- while a is under load
        stub.HandleReloadConfigRequest(reload_request(models, [("a", "all", {"stable": 1, "canary": 2}), ("c", "latest", {})]), timeout=60)
        assert predict(server, "c").json() == {"predictions": [[7.0]]}
        assert predict(server, "a/labels/stable").json() == {"predictions": [[1.0]]}
        assert predict(server, "a/labels/canary").json() == {"predictions": [[2.0]]}
        response = predict(server, "b")
        assert response.status_code == 404 and "Servable not found" in response.json()["error"]
        # relabel: move stable to 2
        stub.HandleReloadConfigRequest(reload_request(models, [("a", "all", {"stable": 2}), ("c", "latest", {})]), timeout=60)
        assert predict(server, "a/labels/stable").json() == {"predictions": [[2.0]]}
        # a label on a version that is not available is refused; the old config keeps serving
        with pytest.raises(grpc.RpcError) as err:
            stub.HandleReloadConfigRequest(reload_request(models, [("a", "all", {"stable": 7})]), timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Request to assign label to version 7 of model a, which is not currently available for inference" in err.value.details()
        assert predict(server, "c").status_code == 200
        # a malformed config is refused too
        bad = reload_request(models, [("a", "all", {})])
        bad.config.model_config_list.config[0].model_platform = "pytorch"
        with pytest.raises(grpc.RpcError) as err:
            stub.HandleReloadConfigRequest(bad, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model_platform" in err.value.details()
        time.sleep(0.5)
    assert load.errors() == []
    assert {r.value for r in load.results} == {2.0}
    assert "model config reload rejected" in server.log()


def test_sighup_and_polling_reread_models_yaml(start_server, models, tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text(f"server: {{model_config_file_poll_wait_seconds: 0.5}}\nmodels:\n  - {{name: b, base_path: {models / 'b'}}}\n")
    server = start_server([f"--config={config}"])
    assert predict(server, "c").status_code == 404
    config.write_text(f"models:\n  - {{name: b, base_path: {models / 'b'}}}\n  - {{name: c, base_path: {models / 'c'}}}\n")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while predict(server, "c").status_code != 200:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    # an invalid file is logged and ignored: b and c keep serving
    config.write_text("models: [{name: b, base_path: /x, bogus: 1}]\n")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "models[0].bogus: unknown key" not in server.log():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert predict(server, "b").status_code == 200 and predict(server, "c").status_code == 200
    # polling picks up a change without a signal: remove c
    config.write_text(f"models:\n  - {{name: b, base_path: {models / 'b'}}}\n")
    deadline = time.monotonic() + 30
    while predict(server, "c").status_code != 404:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    assert predict(server, "b").json() == {"predictions": [[5.0]]}


def wait_for_log(server, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)


def test_reloads_with_empty_or_broken_configs_keep_everything_serving(start_server, models, tmp_path):
    """An empty file (a truncated write, an empty ConfigMap) used to unload every model; a serving
    model moved to a base path that does not exist lost its versions."""
    config = tmp_path / "models.yaml"
    served = f"models:\n  - {{name: b, base_path: {models / 'b'}}}\n"
    config.write_text(served)
    server = start_server([f"--config={config}"])
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
    with Load(server, "b", threads=4) as load:
        for broken, logged in (
            ("", "lists no models: refusing to unload all 1 models"),
            ("models: []\n", "lists no models: refusing to unload all 1 models"),
            ("models: [{name: b, base_path", "invalid YAML"),
            (f"models:\n  - {{name: b, base_path: {models / 'gone'}}}\n", f"base path {models / 'gone'} does not exist"),
        ):
            config.write_text(broken)
            before = server.log().count(logged)
            server.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while server.log().count(logged) == before:
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.1)
            assert predict(server, "b").json() == {"predictions": [[5.0]]}
        with pytest.raises(grpc.RpcError) as err:  # the same over the API
            stub.HandleReloadConfigRequest(reload_request(models, []), timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--allow_empty_model_config" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.HandleReloadConfigRequest(_moved(models, "b", models / "gone"), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"b keeps serving from {models / 'b'}" in err.value.details()
        time.sleep(0.5)
    assert load.errors() == []
    assert {r.value for r in load.results} == {5.0}
    # a valid file applies again
    config.write_text(served + f"  - {{name: c, base_path: {models / 'c'}}}\n")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while predict(server, "c").status_code != 200:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)
    # unloading models one by one names each: the last one may go too
    for name in ("c", "b"):
        assert requests.post(f"{server.rest}/v2/repository/models/{name}/unload", timeout=60).status_code == 200
        assert predict(server, name).status_code == 404


def _moved(root, name, base_path) -> model_management_pb2.ReloadConfigRequest:
    request = reload_request(root, [(name, "latest", {})])
    request.config.model_config_list.config[0].base_path = str(base_path)
    return request


def test_an_empty_reload_unloads_everything_when_allowed(start_server, models):
    server = start_server(["--model_name=b", f"--model_base_path={models / 'b'}", "--allow_empty_model_config"])
    assert predict(server, "b").status_code == 200
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
    stub.HandleReloadConfigRequest(reload_request(models, []), timeout=60)
    assert predict(server, "b").status_code == 404
