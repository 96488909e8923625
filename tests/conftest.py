"""Shared test helpers: start the real fastserve process on loopback and talk to it."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import requests

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
EXAMPLE_MODELS = EXAMPLES / "models"
TESTDATA = REPO.parent / "shared" / "testdata"

needs_testdata = pytest.mark.skipif(
    not TESTDATA.is_dir(), reason=f"TF Serving's test models are not at {TESTDATA} (../shared/testdata)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A real `fastserve` process on loopback with free ports; its log goes to a file."""

    def __init__(self, args: list[str], log_path: Path, rest: bool = True, env: dict | None = None):
        self.grpc_port = free_port()
        self.rest_port = free_port() if rest else 0
        self.log_path = log_path
        cmd = [sys.executable, "-m", "fastserve", *args, "--host=127.0.0.1", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}"]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fastserve exited with {self.proc.returncode}:\n{self.log()}")
            if "fastserve ready" in self.log():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fastserve did not become ready in {timeout}s:\n{self.log()}")

    def batching_totals(self, timeout: float = 10) -> dict:
        """The batch queues' running totals, which the server logs on SIGUSR1."""
        marker = "batching totals: "
        seen = self.log().count(marker)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.log().splitlines() if marker in line]
            if len(lines) > seen:
                return json.loads(lines[-1].split(marker, 1)[1])
            time.sleep(0.1)
        raise AssertionError("the server logged no batching totals")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """start_server(args) -> a ready ServerProcess, stopped at the end of the module."""
    servers = []

    def start(args, rest=True, wait=True, env=None):
        log_path = tmp_path_factory.mktemp("server") / "fastserve.log"
        server = ServerProcess(args, log_path, rest=rest, env=env)
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def rest_predict(server: ServerProcess, model: str, body, suffix: str = ""):
    return requests.post(f"{server.rest}/v1/models/{model}{suffix}:predict", json=body, timeout=30)
