"""The load generators bench/run.py drives servers with: wrk for REST (closed loop), h2load for
gRPC (closed loop, or open loop at a fixed rate) and for REST at a fixed rate (h2load --h1:
wrk has no fixed rate). Debian packages `wrk` and `nghttp2-client`."""
import json
import re
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
JSON_HEADERS = ("content-type: application/json",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a server the bench started: SIGTERM (its graceful shutdown), SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message, as h2load sends it."""
    return struct.pack(">BI", 0, len(message)) + message


@dataclass
class Load:
    """What the load generators send to one model on one server over one protocol."""
    url: str
    bodies: list[bytes]  # REST: JSON bodies (wrk cycles through them; h2load sends the first); gRPC: one framed message
    grpc: bool
    check: Callable[[], bytes] | None = None  # gRPC: a real call of the same kind (h2load cannot see grpc-status); its response


WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format('WRK_JSON {"requests": %%d, "seconds": %%f, "errors": %%d, "p50": %%d, "p90": %%d, "p99": %%d}\\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def run_wrk(url: str, bodies: list[bytes], concurrency: int, seconds: float, workdir: Path) -> dict:
    body_file = workdir / "bodies.txt"
    body_file.write_bytes(b"\n".join(bodies) + b"\n")
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT % body_file)
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    result = json.loads(re.search(r"WRK_JSON (\{.*\})", out).group(1))
    return {
        "requests": result["requests"], "requests_per_s": result["requests"] / result["seconds"],
        "errors": result["errors"],
        "p50_ms": result["p50"] / 1000, "p90_ms": result["p90"] / 1000, "p99_ms": result["p99"] / 1000,
    }


def run_h2load(url: str, body: bytes, headers, connections: int, seconds: float, workdir: Path, streams: int = 1,
               rate: float | None = None, h1: bool = False) -> dict:
    """Closed loop (`streams` calls in flight on each connection), or open loop: `rate` requests/s
    in all, spread over the connections (h2load --rps is per connection). Open loop as h2load
    does it: a request whose connection has `streams` in flight waits in h2load, and its latency
    counts from when it is sent."""
    body_file, log_file = workdir / "h2load_body.bin", workdir / "h2load.log"
    body_file.write_bytes(body)
    log_file.unlink(missing_ok=True)
    cmd = [
        "h2load", f"-c{connections}", f"-m{streams}", "-t1", f"-D{max(1, round(seconds))}", "--warm-up-time=0",
        "-d", str(body_file), *[arg for header in headers for arg in ("-H", header)], f"--log-file={log_file}",
    ]
    if rate:
        cmd.append(f"--rps={rate / connections:.3f}")
    if h1:
        cmd.append("--h1")
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    durations, ok = [], 0
    for line in log_file.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        durations.append(int(micros))
        ok += status == "200"
    took = re.search(r"finished in ([\d.]+)(m?s)", out)
    elapsed = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)
    p50, p90, p99 = (np.percentile(durations, [50, 90, 99]) / 1000) if durations else (0, 0, 0)
    return {"requests": len(durations), "requests_per_s": ok / elapsed, "errors": len(durations) - ok,
            "p50_ms": p50, "p90_ms": p90, "p99_ms": p99}
