"""Version manager end to end: swaps under load, draining, rollback, failed loads, labels, warm-up."""
import shutil
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from tensorflow_serving.apis import prediction_log_pb2

from tests.conftest import EXAMPLE_MODELS
from tests.load import Load, versions_loaded_at_once
from tests.model_builder import export_adder, install_version, write_warmup_logs, write_warmup_requests

POLL = 0.5
State = get_model_status_pb2.ModelVersionStatus


@pytest.fixture(scope="module")
def staging(tmp_path_factory):
    """Staged versions: offsets 1, 2, 3 (answers for x=0 are 1.0, 2.0, 3.0)."""
    root = tmp_path_factory.mktemp("staging")
    return {offset: export_adder(root / f"v{offset}", offset) for offset in (1, 2, 3)}


@pytest.fixture(scope="module")
def env(start_server, staging, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name in ("swap", "drain", "corrupt", "labels", "warm", "badwarm", "lean"):
        (root / name).mkdir()
        install_version(staging[1], root / name, 1)
    install_version(staging[2], root / "labels", 2)
    x = np.array([[5.0]], np.float32)
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    write_warmup_requests(root / "warm" / "1", [request, request])
    shutil.copytree(EXAMPLE_MODELS / "example_scorer", root / "warm_examples")
    write_warmup_logs(root / "warm_examples" / "1", example_logs())
    config = root / "models.yaml"
    config.write_text(f"""
server: {{file_system_poll_wait_seconds: {POLL}}}
models:
  - {{name: swap, base_path: {root / 'swap'}}}
  - {{name: drain, base_path: {root / 'drain'}}}
  - {{name: corrupt, base_path: {root / 'corrupt'}}}
  - {{name: labels, base_path: {root / 'labels'}, version_policy: all, version_labels: {{stable: 1, canary: 2, future: 9}}}}
  - {{name: warm, base_path: {root / 'warm'}}}
  - {{name: badwarm, base_path: {root / 'badwarm'}}}
  - {{name: lean, base_path: {root / 'lean'}, load_policy: resource_preserving}}
  - {{name: warm_examples, base_path: {root / 'warm_examples'}}}
""")
    server = start_server([f"--config={config}", "--max_num_load_retries=2", "--load_retry_interval_micros=300000",
                           "--num_request_iterations_for_warmup=3"])
    return server, root


def example_logs() -> list[prediction_log_pb2.PredictionLog]:
    """One Classify, one Regress and one MultiInference record on example_scorer."""
    classify, regress, multi = (prediction_log_pb2.PredictionLog() for _ in range(3))
    for request, signature in (
        (classify.classify_log.request, "classify_x_to_y"),
        (regress.regress_log.request, "regress_x_to_y"),
    ):
        request.model_spec.signature_name = signature
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    tasks = multi.multi_inference_log.request
    tasks.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"), ("regress_x_to_y", "tensorflow/serving/regress")):
        task = tasks.tasks.add(method_name=method)
        task.model_spec.signature_name = signature
    return [classify, regress, multi]


def status(server, name, version=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return model_service_pb2_grpc.ModelServiceStub(server.channel()).GetModelStatus(request, timeout=30).model_version_status


def predict(server, model, x=0.0, **spec):
    response = requests.post(f"{server.rest}/v1/models/{model}:predict", json={"instances": [[x]], **spec}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0][0]


def test_swaps_under_load_lose_nothing(env, staging):
    server, root = env
    limit = 2 * POLL + 2.0  # two poll periods (the half-copied-version rule) plus load time
    with Load(server, "swap", threads=8) as load:
        time.sleep(1.0)
        since = time.monotonic()
        install_version(staging[2], root / "swap", 2)
        took_2 = load.wait_for_value(2.0, since, timeout=limit + 10)
        since = time.monotonic()
        install_version(staging[3], root / "swap", 3)
        took_3 = load.wait_for_value(3.0, since, timeout=limit + 10)
        since = time.monotonic()
        shutil.rmtree(root / "swap" / "3")  # rollback
        took_back = load.wait_for_value(2.0, since, timeout=limit + 10)
        time.sleep(1.0)
    print(f"switch times: v2 {took_2:.2f}s, v3 {took_3:.2f}s, rollback {took_back:.2f}s; {len(load.results)} requests")
    assert load.errors() == []
    assert len(load.results) > 100
    assert max(took_2, took_3, took_back) <= limit
    assert versions_loaded_at_once(server.log(), "swap") <= 2
    states = {s.version: s.state for s in status(server, "swap")}
    assert states[2] == State.AVAILABLE and states[1] == State.END and states[3] == State.END


def test_in_flight_request_finishes_on_the_unloading_version(env, staging):
    server, root = env
    answer = {}

    def slow_request():
        body = {"signature_name": "slow", "inputs": {"x": [[0.0]], "seconds": 3.0}}
        response = requests.post(f"{server.rest}/v1/models/drain:predict", json=body, timeout=60)
        answer["status"], answer["body"] = response.status_code, response.json()

    holder = threading.Thread(target=slow_request)
    holder.start()
    time.sleep(0.5)
    install_version(staging[2], root / "drain", 2)
    deadline = time.monotonic() + 20
    while predict(server, "drain") != 2.0:
        assert time.monotonic() < deadline, "version 2 never served"
        time.sleep(0.1)
    assert holder.is_alive(), "the slow request should still be in flight when version 2 serves"
    assert {s.version: s.state for s in status(server, "drain")}[1] == State.UNLOADING
    holder.join(30)
    assert answer == {"status": 200, "body": {"outputs": [[1.0]]}}
    deadline = time.monotonic() + 10
    while {s.version: s.state for s in status(server, "drain")}[1] != State.END:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_corrupt_version_keeps_the_old_one_serving(env, staging):
    server, root = env
    staged = root / "corrupt_stage"
    shutil.copytree(staging[2], staged)
    pb = staged / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])  # truncated
    shutil.copytree(staged, root / "corrupt" / "2")
    seen_retry = False
    deadline = time.monotonic() + 30
    while True:
        assert predict(server, "corrupt") == 1.0
        states = {s.version: s for s in status(server, "corrupt")}
        if 2 in states:
            seen_retry |= "attempt 1 of 3 failed" in states[2].status.error_message
            if states[2].state == State.END:
                break
        assert time.monotonic() < deadline, states
        time.sleep(0.05)
    assert seen_retry
    assert states[2].status.error_code != 0 and "SavedModel" in states[2].status.error_message
    assert states[1].state == State.AVAILABLE
    log = server.log()
    assert "model corrupt version 2: LOADING" in log and "model corrupt version 2: END" in log


def test_labels(env):
    server, _ = env
    assert predict(server, "labels") == 2.0  # latest
    for label, value in (("stable", 1.0), ("canary", 2.0)):
        response = requests.post(f"{server.rest}/v1/models/labels/labels/{label}:predict", json={"instances": [[0.0]]}, timeout=30)
        assert response.json() == {"predictions": [[value]]}
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "labels"
        request.model_spec.version_label = label
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros([1, 1], np.float32)))
        response = prediction_service_pb2_grpc.PredictionServiceStub(server.channel()).Predict(request, timeout=30)
        assert response.model_spec.version.value == int(value)
    # a label may only point at an AVAILABLE version: "future" (version 9) is not served
    response = requests.post(f"{server.rest}/v1/models/labels/labels/future:predict", json={"instances": [[0.0]]}, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": "Unrecognized servable version label: future"}
    body = requests.get(f"{server.rest}/v1/models/labels/labels/stable", timeout=30).json()
    assert [s["version"] for s in body["model_version_status"]] == ["1"]


def test_warm_up_replays_the_requests(env):
    server, _ = env
    assert "warm" in server.log() and "warm-up of" in server.log()
    line = next(l for l in server.log().splitlines() if "warm-up of" in l and "/warm/1" in l)
    assert ": 6 requests" in line  # 2 records x --num_request_iterations_for_warmup=3
    assert predict(server, "warm") == 1.0


def test_failed_warm_up_fails_the_load(env, staging):
    server, root = env
    staged = root / "badwarm_stage"
    shutil.copytree(staging[2], staged)
    write_warmup_requests(staged, [], garbage=True)
    shutil.copytree(staged, root / "badwarm" / "2")
    deadline = time.monotonic() + 30
    while True:
        states = {s.version: s for s in status(server, "badwarm")}
        if 2 in states and states[2].state == State.END:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    assert "warm-up failed" in states[2].status.error_message
    assert "TFRecord" in states[2].status.error_message
    assert predict(server, "badwarm") == 1.0


def test_half_copied_version_is_not_loaded(env, staging):
    """A slow copy (saved_model.pb first, variables in pieces) is loaded only once complete."""
    server, root = env
    target = root / "swap" / "4"
    source = staging[3]
    files = sorted(p for p in __import__("pathlib").Path(source).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name != "saved_model.pb")  # the worst order: the graph first
    copy_started = time.monotonic()
    for path in files:
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        with open(dest, "wb") as out:
            for i in range(0, max(len(data), 1), max(1, len(data) // 3)):
                out.write(data[i : i + max(1, len(data) // 3)])
                out.flush()
                time.sleep(0.15)  # less than a poll period between writes
        assert 4 not in {s.version for s in status(server, "swap")}, "version 4 was picked up before its copy finished"
    copy_took = time.monotonic() - copy_started
    assert copy_took > 2 * POLL
    deadline = time.monotonic() + 20
    while predict(server, "swap") != 3.0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    log = server.log()
    assert "model swap version 4: AVAILABLE" in log
    assert "model swap version 4: END" not in log.split("model swap version 4: AVAILABLE")[0]
    shutil.rmtree(target)


def test_every_signature_is_checked_before_a_version_serves(env):
    server, root = env
    line = next(l for l in server.log().splitlines() if "check of" in l and "/badwarm/1" in l)
    assert "(session runtime): serving_default, slow answered a synthetic request" in line  # inputs built from the specs
    line = next(l for l in server.log().splitlines() if "check of" in l and "/warm/1" in l)
    assert "slow answered" in line and "serving_default" not in line  # the warm-up records ran serving_default


def test_resource_preserving_policy_unloads_first(env, staging):
    server, root = env
    install_version(staging[2], root / "lean", 2)
    deadline = time.monotonic() + 20
    gap = False  # unloading first leaves a moment with no version: the price of the policy
    while True:
        response = requests.post(f"{server.rest}/v1/models/lean:predict", json={"instances": [[0.0]]}, timeout=30)
        if response.status_code == 200 and response.json()["predictions"][0][0] == 2.0:
            break
        gap |= response.status_code == 404
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert versions_loaded_at_once(server.log(), "lean") == 1
    log = server.log()
    assert log.index("model lean version 1: END") < log.index("model lean version 2: LOADING")


def test_warm_up_replays_classify_regress_and_multi_inference_records(env):
    server, _ = env
    line = next(l for l in server.log().splitlines() if "warm-up of" in l and "/warm_examples/1" in l)
    assert ": 9 requests" in line  # 3 records x --num_request_iterations_for_warmup=3
    assert [s.state for s in status(server, "warm_examples")] == [State.AVAILABLE]
