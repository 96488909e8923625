"""Three replicas behind nginx (HTTP and gRPC via grpc_pass): under load, a new model version
rolls through every replica and then one replica is stopped, with zero failed requests."""
import os
import shutil
import signal
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import EXAMPLE_MODELS, ServerProcess, free_port, wait_until
from tests.test_e2e_metrics import scrape, value

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package nginx; scripts/install.sh installs it)")

V1, V2 = 2.5, 3.5  # half_plus_two (0.5x + 2) and then half_plus_three (0.5x + 3) as its version 2, for x = 1


NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream rest_replicas {{ {rest_servers} keepalive 16; }}
  upstream grpc_replicas {{ {grpc_servers} keepalive 16; }}
  server {{
    listen 127.0.0.1:{http_port};
    location / {{
      proxy_pass http://rest_replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
    }}
  }}
  server {{
    listen 127.0.0.1:{grpc_port} http2;
    location / {{
      grpc_pass grpc://grpc_replicas;
      grpc_next_upstream error timeout http_502 http_503 non_idempotent;
    }}
  }}
}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    base = tmp / "models" / "half_plus_two"
    shutil.copytree(EXAMPLE_MODELS / "half_plus_two" / "1", base / "1")
    config = tmp / "models.yaml"
    config.write_text(
        "server: {file_system_poll_wait_seconds: 0.5, shutdown_grace_seconds: 20}\n"
        f"models: [{{name: half_plus_two, base_path: {base}}}]\n"
    )
    replicas = [ServerProcess([f"--config={config}"], tmp / f"replica{i}.log") for i in range(3)]
    nginx = None
    try:
        for replica in replicas:
            replica.wait_ready()
        http_port, grpc_port = free_port(), free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(
            tmp=tmp, http_port=http_port, grpc_port=grpc_port,
            user="user root;" if os.geteuid() == 0 else "",
            rest_servers=" ".join(f"server 127.0.0.1:{r.rest_port};" for r in replicas),
            grpc_servers=" ".join(f"server 127.0.0.1:{r.grpc_port};" for r in replicas),
        ))
        nginx = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=open(tmp / "nginx.stderr", "wb"))
        _wait_for_port(http_port, nginx, tmp)
        yield {"tmp": tmp, "base": base, "replicas": replicas, "http": f"http://127.0.0.1:{http_port}",
               "grpc": f"127.0.0.1:{grpc_port}"}
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(30)
        for replica in replicas:
            replica.stop()


def _wait_for_port(port: int, process, tmp, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp / "nginx.stderr").read_text() + (tmp / "error.log").read_text()
        try:
            requests.get(f"http://127.0.0.1:{port}/v1/models/half_plus_two", timeout=5)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("nginx did not start")


class Load:
    """Client threads sending predictions through nginx until stopped; every failure is kept."""

    def __init__(self, cluster, rest_threads=2, grpc_threads=2):
        self._cluster = cluster
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers = {"REST": [], "GRPC": []}
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._rest) for _ in range(rest_threads)]
        self._threads += [threading.Thread(target=self._grpc) for _ in range(grpc_threads)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _keep(self, protocol: str, sent: float, answer=None, failure: str | None = None):
        with self._lock:
            if failure is not None:
                self.failures.append(f"{protocol}: {failure}")
            elif answer not in (V1, V2):
                self.failures.append(f"{protocol}: wrong answer {answer}")
            else:
                self.answers[protocol].append((sent, answer))

    def _rest(self):
        session = requests.Session()
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                response = session.post(f"{self._cluster['http']}/v1/models/half_plus_two:predict", json={"instances": [[1.0]]}, timeout=30)
                if response.status_code != 200:
                    self._keep("REST", sent, failure=f"{response.status_code} {response.text}")
                else:
                    self._keep("REST", sent, response.json()["predictions"][0][0])
            except requests.RequestException as exc:
                self._keep("REST", sent, failure=repr(exc))

    def _grpc(self):
        channel = grpc.insecure_channel(self._cluster["grpc"])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                response = stub.Predict(request, timeout=30)
                self._keep("GRPC", sent, float(tf.make_ndarray(response.outputs["y"])[0][0]))
            except grpc.RpcError as exc:
                self._keep("GRPC", sent, failure=f"{exc.code().name}: {exc.details()}")
        channel.close()

    def count(self) -> int:
        with self._lock:
            return sum(len(a) for a in self.answers.values())


def serving_versions(replica: ServerProcess) -> dict[int, str]:
    statuses = requests.get(f"{replica.rest}/v1/models/half_plus_two", timeout=30).json()["model_version_status"]
    return {int(s["version"]): s["state"] for s in statuses}


def test_roll_a_version_and_lose_a_replica_under_load(cluster):
    replicas = cluster["replicas"]
    with Load(cluster) as load:
        wait_until(lambda: load.count() >= 50, 60, "the first 50 answers")

        # roll version 2 through every replica: written once to the shared model directory
        staging = cluster["tmp"] / "staging"
        shutil.copytree(EXAMPLE_MODELS / "half_plus_three" / "1", staging)
        staging.rename(cluster["base"] / "2")  # complete, then visible under its number
        for replica in replicas:
            wait_until(lambda: serving_versions(replica) == {2: "AVAILABLE", 1: "END"}, 60, f"version 2 on {replica.rest}")  # noqa: B023  awaited here
        rolled = time.monotonic()
        wait_until(lambda: load.count() >= 50 + 50, 60, "answers after the roll")

        # every replica took traffic
        for replica in replicas:
            assert value(scrape(replica), ":tensorflow:serving:request_count_total", model_name="half_plus_two", status="OK") > 0

        # stop one replica mid-load: it drains and exits 0, the others take over
        stopped_at_count = load.count()
        replicas[0].proc.send_signal(signal.SIGTERM)
        assert replicas[0].proc.wait(60) == 0
        wait_until(lambda: load.count() >= stopped_at_count + 100, 60, "answers after losing a replica")

    assert load.failures == [], f"{len(load.failures)} failed requests, first: {load.failures[:5]}"
    for protocol, answers in load.answers.items():
        assert answers, f"no {protocol} answers"
        assert all(answer == V2 for t, answer in answers if t > rolled), f"{protocol}: version 1 answered a request sent after the roll"
        assert any(answer == V1 for _, answer in answers), f"{protocol}: version 1 never answered"
    assert "fastserve stopped" in replicas[0].log()
