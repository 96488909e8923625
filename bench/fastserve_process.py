"""A fastserve process for the scenario benchmarks (latency_target, priorities, many_models):
a models.yaml written from a dict, free loopback ports, its log in the work directory."""
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.loadgen import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]


class FastserveProcess:
    def __init__(self, config: dict, workdir: Path, *args: str, name: str = "fastserve"):
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.log_path = workdir / f"{name}.log"
        cmd = [sys.executable, "-m", "fastserve", f"--config={path}", "--host=127.0.0.1", f"--port={self.grpc_port}",
               f"--rest_api_port={self.rest_port}", *args]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 300
        while "fastserve ready" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fastserve did not start:\n{self.log()}")
            time.sleep(0.2)
        self.rest = f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        stop_process(self.proc)
