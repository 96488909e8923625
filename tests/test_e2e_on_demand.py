"""End to end: models loaded on their first request, under a memory budget.

Small models of three sizes (a 0, 8 or 24 MB variable that the answer depends on) are
configured on demand beside an eagerly loaded one, with a budget that holds a few of them.
"""
import concurrent.futures
import re
import shutil
import time
from pathlib import Path

import grpc
import pytest
import requests
import tritonclient.http as triton_http
from fastserve_client import protos
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from tests.model_builder import export_adder

SIZES_MB = (0, 8, 24)
COUNT = 9  # on-demand models: 3 of each size
BUDGET_MB = 60  # a few of them at a time, never all (together they take about 100 MB)


@pytest.fixture(scope="module")
def env(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("on_demand")
    staged = {mb: export_adder(root / "staged" / f"{mb}mb", 1.0, big_mb=mb) for mb in SIZES_MB}
    lines = [f"server: {{load: on_demand, model_memory_budget_mb: {BUDGET_MB}}}", "models:",
             f"  - {{name: eager, base_path: {root / 'eager'}, load: eager}}",
             f"  - {{name: broken, base_path: {root / 'broken'}}}"]
    shutil.copytree(staged[0], root / "eager" / "1")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    for i in range(COUNT):
        shutil.copytree(staged[SIZES_MB[i % len(SIZES_MB)]], root / f"m{i}" / "1")
        lines.append(f"  - {{name: m{i}, base_path: {root / f'm{i}'}}}")
    config = root / "models.yaml"
    config.write_text("\n".join(lines) + "\n")
    return start_server([f"--config={config}", "--load_retry_interval_micros=500000"])


def predict(server, model: str, x: float = 1.0):
    return requests.post(f"{server.rest}/v1/models/{model}:predict", json={"instances": [[x]]}, timeout=60)


def metric(server, name: str, **labels) -> float:
    total = 0.0
    for line in requests.get(f"{server.rest}/metrics", timeout=10).text.splitlines():
        match = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def states(server, model: str) -> dict[int, str]:
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = stub.GetModelStatus(request, timeout=10)
    return {s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state) for s in response.model_version_status}


def test_an_on_demand_model_is_listed_without_being_loaded_and_serves_on_its_first_request(env):
    server = env
    assert states(server, "m0") == {1: "START"}
    index = {row["name"]: row for row in triton_http.InferenceServerClient(server.rest[7:]).get_model_repository_index()}
    assert index["m0"]["reason"].startswith("not loaded: it loads on its first request")
    assert requests.get(f"{server.rest}/v2/health/ready", timeout=10).status_code == 200  # on-demand models do not hold readiness
    assert predict(server, "m0", 2.0).json() == {"predictions": [[3.0]]}
    assert states(server, "m0") == {1: "AVAILABLE"}
    assert metric(server, "fastserve_model_memory_bytes", model="m0", device="host") > 0


def test_concurrent_first_requests_share_one_load(env):
    server = env
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: predict(server, "m1", float(i)), range(16)))
    assert [a.json() for a in answers] == [{"predictions": [[i + 1.0]]} for i in range(16)]
    assert metric(server, "fastserve_on_demand_loads_total", model="m1") == 1
    assert metric(server, "fastserve_cold_start_seconds_count", model="m1") >= 1


def test_the_budget_unloads_the_least_recently_used_idle_models_and_never_an_eager_one(env):
    server = env
    for _ in range(2):  # twice round: the second round evicts too
        for i in range(COUNT):
            assert predict(server, f"m{i}", 1.0).json() == {"predictions": [[2.0]]}
            assert predict(server, "eager", 1.0).json() == {"predictions": [[2.0]]}
            in_use = metric(server, "fastserve_memory_budget_in_use_bytes")
            assert in_use <= BUDGET_MB * 2**20, f"{in_use / 2**20:.0f} MB of loaded versions past the budget"
    assert metric(server, "fastserve_evictions_total") >= COUNT  # cycling through models that do not fit at once
    assert metric(server, "fastserve_evictions_total", model="eager") == 0
    assert states(server, "eager") == {1: "AVAILABLE"}
    evicted = [i for i in range(COUNT) if states(server, f"m{i}") == {1: "END"}]
    assert evicted == list(range(len(evicted))) and states(server, f"m{COUNT - 1}") == {1: "AVAILABLE"}  # least recent first
    assert re.search(r"evicted model m\d \(idle [\d.]+s, [\d.]+ MB freed\) to make room for m\d", server.log())


def thread_nice_values(server) -> dict[str, set[int]]:
    """The server's threads: name (digits dropped) -> their nice values."""
    found: dict[str, set[int]] = {}
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip().rstrip("0123456789")
            nice = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
        found.setdefault(name, set()).add(nice)
    return found


def test_tensorflow_threads_serve_unniced_after_loads_on_the_niced_load_threads(env):
    server = env
    for i in range(COUNT):
        assert predict(server, f"m{i}", 1.0).status_code == 200
    nice = thread_nice_values(server)
    assert nice["tf_Compute"] == {0}, nice  # made before any load: not inherited from a load thread
    assert any(n > 0 for n in nice["python"]), nice  # the load threads


def test_a_model_that_fails_to_load_answers_its_requests_with_the_error_and_others_still_load(env):
    server = env
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        failed = list(pool.map(lambda _: predict(server, "broken"), range(4)))
    assert len({(a.status_code, a.json()["error"]) for a in failed}) == 1  # the one load's error, for each of them
    assert failed[0].status_code >= 400 and "not a SavedModel" in failed[0].json()["error"]
    assert metric(server, "fastserve_on_demand_loads_total", model="broken", result="failed") == 1  # one load for all four
    assert predict(server, "m2", 5.0).json() == {"predictions": [[6.0]]}
    time.sleep(0.6)  # past load_retry_interval: a request tries again
    predict(server, "broken")
    assert metric(server, "fastserve_on_demand_loads_total", model="broken", result="failed") == 2


def test_no_room_is_refused_with_resource_exhausted_naming_the_budget(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("no_room")
    export_adder(root / "big" / "1", 1.0, big_mb=24)
    export_adder(root / "small" / "1", 1.0)
    config = root / "models.yaml"
    config.write_text(f"server: {{model_memory_budget_mb: 4}}\nmodels:\n  - {{name: big, base_path: {root / 'big'}}}\n"
                      f"  - {{name: small, base_path: {root / 'small'}, load: on_demand}}\n")
    server = start_server([f"--config={config}"])
    assert "loading it anyway (it loads eagerly)" in server.log()
    refused = predict(server, "small")
    assert refused.status_code == 429, refused.text
    assert "memory budget of 4 MB (server.model_memory_budget_mb)" in refused.json()["error"]
    channel = server.channel()
    with pytest.raises(grpc.RpcError) as err:
        triton_grpc_infer(channel, "small")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert predict(server, "big").json() == {"predictions": [[2.0]]}


def triton_grpc_infer(channel, model: str):
    v2 = protos.inference()
    request = v2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", v2.ModelInferRequest.SerializeToString,
                               v2.ModelInferResponse.FromString)
    return call(request, timeout=30)
