"""PyTriton beside fastserve in bench/run.py: the same SavedModels behind Triton's dynamic batcher
with the same max batch size and queue delay, driven over the V2 protocol (REST JSON at
/v2/models/NAME/infer, gRPC ModelInfer) by the same load generators.

PyTriton runs from a venv of its own (nvidia-pytriton and the TensorFlow version this venv has,
from PyPI), created on first use (a few minutes) and kept in the cache directory.
bench/triton_peer_server.py is what runs there.
"""
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from loadgen import Load, free_port, grpc_frame
from thread_cpu import children, pytriton_role

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path.home() / ".cache" / "fastserve-bench" / "pytriton-venv"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def ensure_venv(venv: Path) -> Path:
    """The venv's python; the venv is created first where it is missing or was left half-made."""
    python, complete = venv / "bin" / "python", venv / ".complete"
    if complete.exists():
        return python
    tensorflow = f"tensorflow=={importlib.metadata.version('tensorflow')}"
    print(f"creating the PyTriton venv {venv} (nvidia-pytriton, {tensorflow}); once", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "nvidia-pytriton", tensorflow], check=True)
    complete.touch()
    return python


def version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('nvidia-pytriton'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


class TritonPeer:
    """PyTriton serving `models` ({name: BenchModel}) from `cache`; same interface as run.Server."""

    def __init__(self, python: Path, cache: Path, models: dict, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.models = models
        self.rest_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        spec = {"http_port": self.rest_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port, "models": [
            {"name": name, "path": str(cache / name / "1"), "max_batch_size": model.batching["max_batch_size"],
             "max_queue_delay_microseconds": model.batching["batch_timeout_micros"],
             "instances": model.batching.get("num_batch_threads", 1)}
            for name, model in models.items()]}
        self.log_path = workdir / "pytriton.log"
        self._log = open(self.log_path, "wb")
        # Triton's Python backend stub embeds libpython: the one this interpreter was built with, not another
        # of the same minor version that the system may have (their standard libraries differ)
        env = {**os.environ, "LD_LIBRARY_PATH": ":".join(filter(None, [sysconfig.get_config_var("LIBDIR"),
                                                                         os.environ.get("LD_LIBRARY_PATH")]))}
        self.proc = subprocess.Popen([str(python), str(HERE / "triton_peer_server.py"), json.dumps(spec)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.role = pytriton_role(self.proc.pid)
        deadline = time.monotonic() + 600
        for name in models:
            while not self._ready(name):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PyTriton did not start:\n{self.log_path.read_text(errors='replace')[-5000:]}")
                time.sleep(0.5)

    def _ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}/v2/models/{name}/ready", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def pids(self) -> list[int]:
        return children(self.proc.pid)

    def batch_counts(self, served: str) -> tuple[int, int]:
        """(batches, rows) the model ran so far, from Triton's metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        counts = {}
        for metric in ("nv_inference_exec_count", "nv_inference_count"):
            prefix = f'{metric}{{model="{served}",version="1"}} '
            counts[metric] = next((int(float(line[len(prefix):])) for line in text.splitlines() if line.startswith(prefix)), 0)
        return counts["nv_inference_exec_count"], counts["nv_inference_count"]

    def load(self, model, served: str, batching: bool, protocol: str, rows: int) -> Load | None:
        """V2 requests for `rows` rows of the model's input; None where PyTriton has no such point."""
        if not batching or served not in self.models or protocol not in ("rest", "grpc"):
            return None
        from tritonclient.grpc import service_pb2
        from tritonclient.utils import np_to_triton_dtype

        data = model.make_rows(rows)
        datatype = np_to_triton_dtype(data.dtype)
        if protocol == "rest":
            body = {"inputs": [{"name": model.input_name, "shape": list(data.shape), "datatype": datatype,
                                "data": data.ravel().tolist()}]}
            return Load(f"http://127.0.0.1:{self.rest_port}/v2/models/{served}/infer", [json.dumps(body).encode()], False)
        request = service_pb2.ModelInferRequest(model_name=served, raw_input_contents=[data.tobytes()])
        request.inputs.add(name=model.input_name, datatype=datatype, shape=data.shape)
        message = request.SerializeToString()
        return Load(f"http://127.0.0.1:{self.grpc_port}{MODEL_INFER}", [grpc_frame(message)], True,
                    lambda: self._check(served, message))

    def _check(self, served: str, message: bytes) -> bytes:
        """A real ModelInfer call; half_plus_two must answer y = 3.0 for x = 2.0."""
        from tritonclient.grpc import service_pb2

        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            answer = channel.unary_unary(MODEL_INFER)(message, timeout=60)
        y = np.frombuffer(service_pb2.ModelInferResponse.FromString(answer).raw_output_contents[0], np.float32)
        if served == "half_plus_two" and y.tolist() != [3.0]:
            raise AssertionError(f"PyTriton's half_plus_two answered {y} for x = 2.0, not y = 3.0")
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # PyTriton stops tritonserver and its stubs
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its session is left
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()
