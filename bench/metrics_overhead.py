"""What the per-request Prometheus metrics cost.

    python bench/metrics_overhead.py               # ~1 minute
    python bench/metrics_overhead.py --rounds 5 --seconds 10

Two measurements:
1. in process: the recording calls one request makes (request count and latency, the
   per-version count and runtime latency, queue wait and execution, in-flight gauge),
   timed over many iterations, in microseconds per request;
2. end to end: fastserve serving half_plus_two with --enable_metrics=true and =false,
   alternating, under wrk (REST) and h2load (gRPC) load (Debian packages wrk and
   nghttp2-client); the median requests/s of each mode and the difference.
"""
import argparse
import json
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = REPO / "examples" / "models" / "half_plus_two"


def in_process_cost(iterations: int = 200_000) -> float:
    """Microseconds per request spent recording its metrics."""
    from grpc import StatusCode

    from fastserve import metrics

    in_flight = metrics.IN_FLIGHT.labels("REST")
    ok = StatusCode.OK
    started = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        in_flight.inc()
        series = metrics.model_series("half_plus_two", 1, "serving_default", "Predict")
        metrics.execution_series("half_plus_two", 1, "serving_default").ran(t0, t0, t0)
        series.count(ok)
        series.ran(0.0001)
        in_flight.dec()
        metrics.request_series("REST", "Predict", "half_plus_two").done(ok, t0)
    return (time.perf_counter() - started) / iterations * 1e6


class Server:
    def __init__(self, enable_metrics: bool, workdir: Path):
        from tests.conftest import free_port

        self.grpc_port, self.rest_port = free_port(), free_port()
        self._log = open(workdir / f"fastserve_{enable_metrics}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastserve", "--model_name=half_plus_two", f"--model_base_path={MODEL}",
             "--host=127.0.0.1", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
             f"--enable_metrics={str(enable_metrics).lower()}"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        log_path = Path(self._log.name)
        deadline = time.monotonic() + 120
        while "fastserve ready" not in log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fastserve did not start:\n{log_path.read_text()}")
            time.sleep(0.2)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)
        self._log.close()


def wrk_rps(server: Server, seconds: float, concurrency: int, workdir: Path) -> float:
    script = workdir / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      'wrk.body = \'{"instances": [[1.0]]}\'\n')
    out = subprocess.run(
        ["wrk", f"-t{min(concurrency, 2)}", f"-c{concurrency}", f"-d{int(seconds)}s", "-s", str(script),
         f"http://127.0.0.1:{server.rest_port}/v1/models/half_plus_two:predict"],
        capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def grpc_body(workdir: Path) -> Path:
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    payload = request.SerializeToString()
    path = workdir / "predict.grpc"
    path.write_bytes(struct.pack(">?I", False, len(payload)) + payload)  # gRPC message frame
    return path


def h2load_rps(server: Server, seconds: float, concurrency: int, body: Path) -> float:
    out = subprocess.run(
        ["h2load", "-D", str(int(seconds)), "-c", "4", "-m", str(max(1, concurrency // 4)), "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{server.grpc_port}/tensorflow.serving.PredictionService/Predict"],
        capture_output=True, text=True, check=True).stdout
    return float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="on/off pairs, alternating (default 3)")
    p.add_argument("--seconds", type=int, default=5, help="load duration per point (default 5)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)

    results = {"in_process_us_per_request": round(in_process_cost(), 3)}
    print(f"in process: {results['in_process_us_per_request']:.2f} us of metrics recording per request")
    protocols = [name for name, tool in (("rest", "wrk"), ("grpc", "h2load")) if shutil.which(tool)]
    if not protocols:
        print("neither wrk nor h2load is installed: no end-to-end measurement")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        body = grpc_body(workdir) if "grpc" in protocols else None
        rps = {(protocol, mode): [] for protocol in protocols for mode in (True, False)}
        for round_ in range(args.rounds):
            for enabled in ((True, False) if round_ % 2 == 0 else (False, True)):
                server = Server(enabled, workdir)
                try:
                    for protocol in protocols:
                        measure = wrk_rps if protocol == "rest" else h2load_rps
                        rps[(protocol, enabled)].append(
                            measure(server, args.seconds, args.concurrency, workdir if protocol == "rest" else body))
                finally:
                    server.stop()
    print("\n| protocol | req/s, metrics on | req/s, metrics off | overhead |\n|---|---|---|---|")
    for protocol in protocols:
        on, off = statistics.median(rps[(protocol, True)]), statistics.median(rps[(protocol, False)])
        overhead = (off - on) / off * 100
        results[protocol] = {"on": rps[(protocol, True)], "off": rps[(protocol, False)], "overhead_percent": round(overhead, 2)}
        print(f"| {protocol} | {on:.0f} | {off:.0f} | {overhead:+.1f}% |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
