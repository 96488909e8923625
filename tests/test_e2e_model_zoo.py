"""End to end: the model zoo (tests/model_zoo.py) served as users deploy it, against in-process answers.

Every model is listed with its name and base path only (the default runtime and
settings), on a server without and one with --enable_batching; every case goes over
REST and gRPC. A version whose variables are truncated must fail its load and never
take the place of the version that answers.
"""
import base64
import pickle
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.conftest import REPO
from tests.model_builder import export_adder, install_version
from tests.model_zoo import MODELS, example_proto

SERVERS = {"plain": [], "batching": ["--enable_batching"]}
State = get_model_status_pb2.ModelVersionStatus


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The exported zoo and its cases; exported in a subprocess so Keras stays out of this one."""
    root = tmp_path_factory.mktemp("zoo")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tests.model_zoo", str(root)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-10000:]
    print(f"model zoo exported in {time.monotonic() - started:.1f}s")
    with open(root / "cases.pkl", "rb") as f:
        return root, pickle.load(f)


@pytest.fixture(scope="module")
def servers(start_server, zoo):
    root, _ = zoo
    config = root / "models.yaml"
    config.write_text("models:\n" + "".join(f"  - name: {name}\n    base_path: {root / name}\n" for name in MODELS))
    started = {name: start_server([f"--config={config}", *flags], wait=False) for name, flags in SERVERS.items()}
    return {name: server.wait_ready(timeout=300) for name, server in started.items()}


# ---------------------------------------------------------------- comparing answers


def assert_matches(name: str, got, expected: np.ndarray) -> None:
    """Exact for strings, integers and booleans; floats to rtol 1e-5, plus 4 float32 ULPs of the output's
    largest magnitude for values near zero (so float16 and bfloat16 answers must be exact, except near zero)."""
    if expected.dtype == object:
        got = np.array(got, dtype=object)
        assert got.shape == expected.shape and got.tolist() == expected.tolist(), name
        return
    got = np.asarray(got)
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    if expected.dtype.kind in "biu":
        np.testing.assert_array_equal(got, expected, err_msg=name)
        return
    scale = float(np.max(np.abs(expected.astype(np.float64)), initial=0.0))
    atol = 4 * float(np.finfo(np.float32).eps) * scale
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=1e-5, atol=atol, err_msg=name)


def from_json(value, expected: np.ndarray):
    """A JSON output as the array it stands for; strings come back as text or {"b64": ...}."""
    if expected.dtype != object:
        return value

    def decode(v):
        if isinstance(v, list):
            return [decode(x) for x in v]
        return base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode()

    out = np.empty(expected.shape, dtype=object)
    out[...] = decode(value)
    return out


def to_json(array: np.ndarray):
    """JSON values for an input: text (or {"b64": ...} when not UTF-8) for strings, numbers otherwise."""
    if array.dtype == object:
        def encode(v):
            if isinstance(v, list):
                return [encode(x) for x in v]
            try:
                return v.decode()
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(v).decode()}
        return encode(array.tolist())
    if array.dtype.kind == "f" or array.dtype == ml_dtypes.bfloat16:
        return array.astype(np.float64).tolist()  # float16 and bfloat16 values are exact as float64
    return array.tolist()


# ---------------------------------------------------------------- one case over one protocol


def rest_case(server, model, case) -> None:
    url = f"{server.rest}/v1/models/{model}"
    expected = case["outputs"]
    if case["method"] != "predict":
        body = {"signature_name": case["signature"], "examples": case["examples"]}
        response = requests.post(f"{url}:{case['method']}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        if case["method"] == "regress":
            assert_matches("outputs", results, expected["outputs"].reshape(-1))
            return
        assert_matches("classes", from_json([[label for label, _ in r] for r in results], expected["classes"]), expected["classes"])
        assert_matches("scores", [[score for _, score in r] for r in results], expected["scores"])
        return
    inputs = case["inputs"]
    body = {"signature_name": case["signature"]}
    if case["rest"] == "inputs":
        body["inputs"] = {name: to_json(array) for name, array in inputs.items()}
    elif len(inputs) == 1:
        body["instances"] = to_json(next(iter(inputs.values())))
    else:
        columns = {name: to_json(array) for name, array in inputs.items()}
        rows = len(next(iter(columns.values())))
        body["instances"] = [{name: column[i] for name, column in columns.items()} for i in range(rows)]
    response = requests.post(f"{url}:predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    if case["rest"] == "inputs":
        got = answer["outputs"] if len(expected) > 1 else {next(iter(expected)): answer["outputs"]}
    elif len(expected) > 1:
        got = {name: [row[name] for row in answer["predictions"]] for name in expected}
    else:
        got = {next(iter(expected)): answer["predictions"]}
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert_matches(name, from_json(got[name], value), value)


def grpc_case(server, model, case) -> None:
    expected = case["outputs"]
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        if case["method"] == "predict":
            request = predict_pb2.PredictRequest()
            for name, array in case["inputs"].items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
            call = stub.Predict
        else:
            request = (classification_pb2.ClassificationRequest if case["method"] == "classify" else regression_pb2.RegressionRequest)()
            request.input.example_list.examples.extend(example_proto(e) for e in case["examples"])
            call = stub.Classify if case["method"] == "classify" else stub.Regress
        request.model_spec.name = model
        request.model_spec.signature_name = case["signature"]
        response = call(request, timeout=30)
    assert response.model_spec.version.value == 1
    if case["method"] == "classify":
        classes = response.result.classifications
        assert_matches("classes", np.array([[c.label.encode() for c in r.classes] for r in classes], dtype=object), expected["classes"])
        assert_matches("scores", [[c.score for c in r.classes] for r in classes], expected["scores"])
    elif case["method"] == "regress":
        assert_matches("outputs", [r.value for r in response.result.regressions], expected["outputs"].reshape(-1))
    else:
        assert sorted(response.outputs) == sorted(expected)
        for name, value in expected.items():
            got = tf.make_ndarray(response.outputs[name])
            assert got.dtype == value.dtype, (name, got.dtype, value.dtype)
            assert_matches(name, got, value)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_zoo_model_answers_as_in_process(zoo, servers, server_name, protocol, model):
    _, cases = zoo
    server = servers[server_name]
    run_case = rest_case if protocol == "rest" else grpc_case
    for case in cases[model]:
        run_case(server, model, case)
    # Together, so that the batching server merges requests into batches and splits the answers.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda case: run_case(server, model, case), cases[model] * 4))


@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_every_zoo_model_serves_on_the_session_runtime(servers, server_name):
    """What runtime: auto chooses for each export style (the README's table says the same)."""
    log = servers[server_name].log()
    assert [name for name in sorted(MODELS) if f"model {name} version 1: session runtime (it loads and answers on it)" not in log] == []


# ---------------------------------------------------------------- a version that cannot answer


def model_status(server, name) -> dict:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with server.channel() as channel:
        statuses = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30).model_version_status
    return {s.version: s for s in statuses}


@pytest.fixture(scope="module")
def broken(start_server, tmp_path_factory):
    """Two models whose version 2 has half a variables file (y = x + 1 in version 1, x + 2 in 2).

    broken_all (version_policy all) has both versions at start; broken_latest (latest 1)
    starts with version 1 and gets version 2 while it serves.
    """
    root = tmp_path_factory.mktemp("broken")
    staged = export_adder(root / "staged_v2", offset=2.0)
    data = next((root / "staged_v2" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    for name in ("broken_all", "broken_latest"):
        export_adder(root / name / "1", offset=1.0)
    install_version(staged, root / "broken_all", 2)
    config = root / "models.yaml"
    config.write_text(f"""
server: {{file_system_poll_wait_seconds: 0.5, max_num_load_retries: 0}}
models:
  - {{name: broken_all, base_path: {root / 'broken_all'}, version_policy: all}}
  - {{name: broken_latest, base_path: {root / 'broken_latest'}}}
""")
    server = start_server([f"--config={config}"])
    install_version(staged, root / "broken_latest", 2)
    deadline = time.monotonic() + 60
    while (version_2 := model_status(server, "broken_latest").get(2)) is None or version_2.state != State.END:
        assert time.monotonic() < deadline, version_2
        time.sleep(0.1)
    return server


@pytest.mark.parametrize("model", ["broken_all", "broken_latest"])
def test_truncated_variables_never_become_available(broken, model):
    states = model_status(broken, model)
    assert states[2].state == State.END
    assert states[2].status.error_code != 0, states[2]
    assert "Read less bytes than requested" in states[2].status.error_message  # TensorFlow's words for the cut file
    assert states[1].state == State.AVAILABLE and states[1].status.error_code == 0
    body = requests.get(f"{broken.rest}/v1/models/{model}", timeout=30).json()
    rest_states = {s["version"]: s for s in body["model_version_status"]}
    assert rest_states["2"]["state"] == "END"
    assert rest_states["2"]["status"]["error_message"] == states[2].status.error_message
    assert rest_states["1"]["state"] == "AVAILABLE"
    response = requests.post(f"{broken.rest}/v1/models/{model}:predict", json={"instances": [[0.5]]}, timeout=30)
    assert (response.status_code, response.json()) == (200, {"predictions": [[1.5]]})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[4.0]], np.float32)))
    with broken.channel() as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert answer.model_spec.version.value == 1
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == [[5.0]]
