"""gRPC soak: many calls, 1% cancelled by the client, 1% already expired on arrival; RSS over the run.

    python bench/grpc_stress.py                       # 10^6 calls on the default transport
    python bench/grpc_stress.py --calls 100000 --grpc_transport aio

Three loads run at once against half_plus_two: h2load with plain calls (98%), h2load with
`grpc-timeout: 1n` (1%: expired when they arrive; the server must answer
DEADLINE_EXCEEDED), and a gRPC client that starts calls and cancels each at once (1%).
It prints h2load's counts (every call must be done, none failed or errored), the
server's RSS after warm-up, at its peak and at the end, and checks the server still
answers y=3.0 afterwards. Needs h2load (Debian package nghttp2-client).
"""
import argparse
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from run import free_port  # noqa: E402 - after sys.path names the folder


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def request() -> predict_pb2.PredictRequest:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = "half_plus_two"
    r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
    return r


def h2load(port: int, body: Path, calls: int, extra_headers=()) -> str:
    headers = ["content-type: application/grpc", "te: trailers", *extra_headers]
    cmd = ["h2load", f"-n{calls}", "-c32", "-m8", "-t1", "-d", str(body), *[a for h in headers for a in ("-H", h)],
           f"http://127.0.0.1:{port}/tensorflow.serving.PredictionService/Predict"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    return next((line for line in out.splitlines() if line.startswith("requests:")), out)


def cancel_calls(port: int, calls: int, counts: dict) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(calls):
            future = stub.Predict.future(request(), timeout=30)
            counts["cancelled" if future.cancel() else "finished_first"] += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--grpc_transport", default="", help="native or aio (default: the server's default)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "call.bin"
        payload = request().SerializeToString()
        body.write_bytes(struct.pack(">BI", 0, len(payload)) + payload)
        port = free_port()
        cmd = [sys.executable, "-m", "fastserve", "--model_name=half_plus_two",
               f"--model_base_path={REPO / 'examples' / 'models' / 'half_plus_two'}", "--host=127.0.0.1", f"--port={port}"]
        if args.grpc_transport:
            cmd.append(f"--grpc_transport={args.grpc_transport}")
        log = Path(tmp) / "fastserve.log"
        with open(log, "wb") as log_file:
            server = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            while "fastserve ready" not in log.read_text(errors="replace"):
                if server.poll() is not None:
                    print(log.read_text(errors="replace"))
                    return 1
                time.sleep(0.2)
            h2load(port, body, 20_000)  # warm-up
            rss = [rss_mb(server.pid)]
            stop = threading.Event()

            def sample():
                while not stop.wait(1):
                    rss.append(rss_mb(server.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            counts = {"cancelled": 0, "finished_first": 0}
            started = time.monotonic()
            canceller = threading.Thread(target=cancel_calls, args=(port, args.calls // 100, counts))
            canceller.start()
            expired = {}
            expirer = threading.Thread(target=lambda: expired.update(r=h2load(port, body, args.calls // 100, ["grpc-timeout: 1n"])))
            expirer.start()
            plain = h2load(port, body, args.calls - 2 * (args.calls // 100))
            expirer.join()
            canceller.join()
            stop.set()
            sampler.join()
            rss.append(rss_mb(server.pid))
            seconds = time.monotonic() - started
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request(), timeout=10)
            y = tf.make_ndarray(response.outputs["y"]).item()
        finally:
            server.terminate()
            server.wait(60)
    print(f"{args.calls:,} calls in {seconds:.0f}s on {args.grpc_transport or 'the default transport'}")
    print(f"plain:   {plain}")
    print(f"expired: {expired.get('r')}")
    print(f"client-cancelled: {counts['cancelled']:,} (finished before the cancel: {counts['finished_first']:,})")
    print(f"RSS MB: after warm-up {rss[0]:.0f}, peak {max(rss):.0f}, end {rss[-1]:.0f} ({(rss[-1] / rss[0] - 1) * 100:+.1f}%)")
    print(f"after the run: y = {y}")
    return 0 if y == 3.0 else 1


if __name__ == "__main__":
    sys.exit(main())
