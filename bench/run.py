"""fastserve benchmark: one command, all models, both protocols, batching on and off.

    python bench/run.py            # full run (several minutes)
    python bench/run.py --quick    # CI smoke run, under 2 minutes
    python bench/run.py --baseline ../old   # also every point on another checkout, same run

It exports the benchmark models into a cache directory, measures each model's
in-process limit (its signature called directly, no server), starts fastserve with
every model twice (NAME batched, NAME_nobatch not), and drives load from separate
C load generators: wrk for REST and h2load for gRPC (Debian packages `wrk` and
`nghttp2-client`). Protocol `grpc` is the default gRPC transport (native where built);
`grpc-aio` is a second server started with --grpc_transport=aio, for comparison.
For each model, protocol, batching mode and concurrency it
reports requests/s, rows/s, p50/p90/p99 latency and the server's mean batch size
(read from the `batching totals` line the server logs on SIGUSR1). With --baseline, a
second server runs from another checkout (e.g. `git worktree add ../old REV`, built in
place) and every point runs on it right after this one: rows `PROTOCOL@baseline`, and the
ratios section compares them. Beside fastserve, in the same run:

- PyTriton (rows `PROTOCOL@pytriton`, bench/triton_peer.py): the same SavedModels behind
  Triton's dynamic batcher with the same max batch size and queue delay, over the V2 protocol;
- the native gRPC transport's ceiling (rows `grpc@ceiling`, bench/ceiling.py): every call
  answered from C++ with the model's real response, no Python or TensorFlow;
- the open loop (--open-loop): requests at a fixed rate (h2load --rps; over HTTP/1.1 for
  REST), at fractions of the capacity the closed loop measured, batching on.

Every point reports the server's CPU time per request by thread role (bench/thread_cpu.py).
Results go to bench/results/: results.json, results.md (the tables) and results.png
(throughput and p99 against concurrency; p99 against the offered rate).
"""
import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import thread_cpu
import triton_peer
from loadgen import GRPC_HEADERS, JSON_HEADERS, Load, free_port, grpc_frame, run_h2load, run_wrk, stop_process

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PREDICT = "/tensorflow.serving.PredictionService/Predict"
OPEN_LOOP = {"rest": (256, 1), "grpc": (64, 8)}  # open-loop connections and requests in flight on each at most


@dataclass
class BenchModel:
    name: str
    input_name: str
    make_rows: object  # rows -> np.ndarray, the request input
    batching: dict
    concurrency: tuple[int, ...]
    export: object  # path -> None
    batch_sizes: tuple[int, ...]  # in-process limit measured at these
    min_seconds: float = 0  # slow models need longer runs for any request to finish
    grpc_multiplexed: tuple[tuple[int, int], ...] = ()  # extra gRPC points: (connections, concurrent streams on each)
    peer: bool = False  # also served by PyTriton
    open_loop: bool = False  # also measured in the open loop


# ---------------------------------------------------------------- models


def export_half_plus_two(path: Path) -> None:
    shutil.copytree(REPO / "examples" / "models" / "half_plus_two" / "1", path)


def export_mlp(path: Path, sizes: tuple[int, ...] = (784, 1024, 1024, 10)) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(1)

    class Mlp(tf.Module):
        def __init__(self):
            self.layers = [
                (tf.Variable(rng.normal(0, (2 / m) ** 0.5, (m, n)).astype(np.float32)), tf.Variable(np.zeros(n, np.float32)))
                for m, n in zip(sizes, sizes[1:])
            ]

        @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="x")])
        def serve(self, x):
            for i, (w, b) in enumerate(self.layers):
                x = tf.matmul(x, w) + b
                x = tf.nn.relu(x) if i < len(self.layers) - 1 else x
            return {"y": x}

    module = Mlp()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def export_resnet50(path: Path) -> None:
    """Keras's ResNet-50 with random weights, wrapped in a tf.Module and saved with tf.saved_model.save."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1)
    model = tf.keras.applications.ResNet50(weights=None)

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="x")])
    def serve(x):
        return {"y": model(x, training=False)}

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def export_text(path: Path) -> None:
    """Token ids [batch, length] (0 = padding) -> mean of their embeddings -> 2 logits."""
    import tensorflow as tf

    rng = np.random.default_rng(2)

    class Text(tf.Module):
        def __init__(self):
            self.embedding = tf.Variable(rng.normal(size=(20000, 128)).astype(np.float32))
            self.w = tf.Variable(rng.normal(size=(128, 2)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
        def serve(self, tokens):
            mask = tf.cast(tokens > 0, tf.float32)[..., None]
            summed = tf.reduce_sum(tf.gather(self.embedding, tokens) * mask, 1)
            return {"logits": tf.matmul(summed / tf.maximum(tf.reduce_sum(mask, 1), 1.0), self.w)}

    module = Text()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def text_rows(n: int, rng=np.random.default_rng(5)) -> np.ndarray:  # noqa: B008  one seeded stream shared by every call
    return rng.integers(1, 20000, size=(n, int(rng.integers(8, 33))), dtype=np.int32)


MODELS = {
    "half_plus_two": BenchModel(
        "half_plus_two", "x", lambda n: np.full((n, 1), 2.0, np.float32),
        {"max_batch_size": 256, "batch_timeout_micros": 500, "num_batch_threads": 1},
        (1, 8, 64, 256), export_half_plus_two, (1, 256), grpc_multiplexed=((64, 8),), peer=True, open_loop=True,
    ),
    "mlp": BenchModel(
        "mlp", "x", lambda n: np.random.default_rng(3).random((n, 784), np.float32),
        {"max_batch_size": 64, "batch_timeout_micros": 2000, "num_batch_threads": 2},
        (1, 8, 64, 256), export_mlp, (1, 64, 128, 512), peer=True, open_loop=True,
    ),
    "resnet50": BenchModel(
        "resnet50", "x", lambda n: np.random.default_rng(4).random((n, 224, 224, 3), np.float32),
        {"max_batch_size": 16, "batch_timeout_micros": 20000, "num_batch_threads": 1},
        (1, 16), export_resnet50, (1, 16), min_seconds=20, peer=True,
    ),
    "text": BenchModel(
        "text", "tokens", text_rows,
        {"max_batch_size": 128, "batch_timeout_micros": 2000, "num_batch_threads": 2, "pad_variable_length_inputs": True},
        (1, 8, 64, 256), export_text, (1, 128),
    ),
}


def ensure_exported(cache: Path, names) -> None:
    for name in names:
        target = cache / name / "1"
        if (target / "saved_model.pb").exists():
            continue
        print(f"exporting {name} -> {target}", flush=True)
        tmp = cache / name / ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        MODELS[name].export(tmp)
        tmp.rename(target)


# ---------------------------------------------------------------- in-process limit


RUNTIMES = {}  # model name -> the runtime the server's default config chose, as in-process
BASELINE, PYTRITON, CEILING = "@baseline", "@pytriton", "@ceiling"  # protocol label suffixes of the other servers' rows


def in_process_limit(cache: Path, model: BenchModel, seconds: float) -> dict:
    """Rows/s of the served signature called directly, loaded as the server loads it by default
    (the same runtime choice and check)."""
    from fastserve.config import ModelConfig, ServerConfig
    from fastserve.servables.version_loader import load_version, session_config

    server, path = ServerConfig(), str(cache / model.name / "1")
    loaded = load_version(path, ModelConfig(model.name, path), server, session_config(server), 1)
    RUNTIMES[model.name] = loaded.runtime
    try:
        signature = loaded.signatures["serving_default"]
        keys = signature.all_output_keys
        out = {}
        for size in model.batch_sizes:
            inputs = {model.input_name: model.make_rows(size)}
            signature.run(inputs, keys)  # warm-up
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                signature.run(inputs, keys)
                calls += 1
            out[size] = calls * size / (time.perf_counter() - start)
        return out
    finally:
        loaded.close()


# ---------------------------------------------------------------- servers


class Server:
    """fastserve with every model twice (NAME batched, NAME_nobatch not), run from `repo`: this
    checkout, or another one built in place (--baseline). Its Python threads carry their names
    (bench/named_threads.py), so that its CPU time splits by thread role."""

    role = staticmethod(thread_cpu.fastserve_role)

    def __init__(self, cache: Path, names, workdir: Path, grpc_transport: str = "", repo: Path = REPO):
        workdir.mkdir(parents=True, exist_ok=True)
        lines = ["models:"]
        for name in names:
            params = ", ".join(f"{k}: {json.dumps(v)}" for k, v in MODELS[name].batching.items())
            lines += [f"  - name: {name}", f"    base_path: {cache / name}", f"    batching: {{{params}}}"]
            lines += [f"  - name: {name}_nobatch", f"    base_path: {cache / name}"]
        config = workdir / "models.yaml"
        config.write_text("\n".join(lines) + "\n")
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.log_path = workdir / "fastserve.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, str(REPO / "bench" / "named_threads.py"), f"--config={config}", "--host=127.0.0.1",
               f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}"]
        if grpc_transport:
            cmd.append(f"--grpc_transport={grpc_transport}")
        env = {**os.environ, "PYTHONPATH": str(repo)}  # that checkout's package, not the installed one
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=repo, env=env)
        deadline = time.monotonic() + 300
        while "fastserve ready" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fastserve did not start:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def batch_counts(self, served: str) -> tuple[int, int]:
        """(batches, rows) the model ran so far: the server's running batching totals (it logs them on SIGUSR1)."""
        before = self.log().count("batching totals: ")
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [l for l in self.log().splitlines() if "batching totals: " in l]
            if len(lines) > before:
                totals = json.loads(lines[-1].split("batching totals: ", 1)[1]).get(f"{served}/1/serving_default", {})
                return totals.get("batches", 0), totals.get("rows", 0)
            time.sleep(0.05)
        raise RuntimeError("the server did not log its batching totals")

    def load(self, model: BenchModel, served: str, batching: bool, protocol: str, rows: int) -> Load:
        """TF Serving API requests: REST predict, gRPC Predict."""
        if protocol == "rest":
            return Load(f"http://127.0.0.1:{self.rest_port}/v1/models/{served}:predict", rest_bodies(model, rows), False)
        return Load(f"http://127.0.0.1:{self.grpc_port}{PREDICT}", [grpc_body(served, model, rows)], True,
                    lambda: check_grpc(self.grpc_port, served, model))

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class Ceiling:
    """The native gRPC transport's ceiling (bench/ceiling.py): the same gRPC requests as `server`
    gets, each answered from C++ with the model's real response (fetched from `server` once)."""

    role = staticmethod(thread_cpu.ceiling_role)

    def __init__(self, server: Server, workdir: Path):
        self.server, self.workdir = server, workdir
        self.proc = self.served = self.port = None

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def batch_counts(self, served: str) -> None:
        return None

    def load(self, model: BenchModel, served: str, batching: bool, protocol: str, rows: int) -> Load | None:
        if protocol != "grpc" or not batching:
            return None
        load = self.server.load(model, served, batching, protocol, rows)
        if served != self.served:
            self.stop()
            reply = self.workdir / "ceiling_reply.bin"
            reply.write_bytes(load.check())
            self.proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "ceiling.py"), str(reply)], stdout=subprocess.PIPE,
                                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            self.port, self.served = int(self.proc.stdout.readline().split()[-1]), served  # "ceiling ready PORT"
        return Load(f"http://127.0.0.1:{self.port}{PREDICT}", load.bodies, True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = self.served = None


# ---------------------------------------------------------------- requests


def rest_bodies(model: BenchModel, rows: int) -> list[bytes]:
    count = 8 if model.name == "text" else 1  # variable-length text: several lengths
    return [json.dumps({"inputs": {model.input_name: model.make_rows(rows).tolist()}}).encode() for _ in range(count)]


def grpc_body(model_name: str, model: BenchModel, rows: int) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs[model.input_name].CopyFrom(tf.make_tensor_proto(model.make_rows(rows)))
    return grpc_frame(request.SerializeToString())


def check_grpc(port: int, model_name: str, model: BenchModel) -> bytes:
    """A real gRPC call of the kind h2load sends (h2load counts HTTP 200 and cannot see grpc-status):
    it must succeed, and half_plus_two must answer y = 3.0 for x = 2.0. Returns the serialized response."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs[model.input_name].CopyFrom(tf.make_tensor_proto(model.make_rows(1)))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    if model.name == "half_plus_two" and tf.make_ndarray(response.outputs["y"]).tolist() != [[3.0]]:
        raise AssertionError(f"{model_name} answered {response.outputs['y']} for x = 2.0, not y = 3.0")
    return response.SerializeToString()


# ---------------------------------------------------------------- run


@dataclass
class Row:
    model: str
    protocol: str
    batching: bool
    concurrency: int  # open loop: connections
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    mean_batch_size: float | None
    streams: int = 1  # gRPC: concurrent calls on each connection (h2load -m); open loop: at most
    in_process_rows_per_s: dict = field(default_factory=dict)
    offered_per_s: float | None = None  # open loop: the fixed arrival rate ...
    offered_fraction: float | None = None  # ... as a fraction of the closed loop's most requests/s
    cpu_us_per_request: dict = field(default_factory=dict)  # the server's, by thread role (bench/thread_cpu.py)
    client_cpu_us_per_request: float = 0.0  # the load generator's (wrk, h2load), on the same cores


def sweep(servers: dict, names, protocols, default_seconds: float, workdir: Path, rows_per_request: int = 1) -> list[Row]:
    """Every point against each server in turn ({label suffix: server}: "" for this checkout,
    "@baseline" for the other, "@pytriton", "@ceiling"), so that they share the machine's moods.
    Another server that fails a point is left out from there on (said, with its log), and the
    run goes on."""
    results, failed = [], set()
    for name in names:
        model = MODELS[name]
        seconds = max(default_seconds, model.min_seconds)
        for batching in (True, False):
            served = name if batching else f"{name}_nobatch"
            for protocol in protocols:
                points = [(c, 1) for c in model.concurrency]
                if protocol.startswith("grpc"):
                    points += list(model.grpc_multiplexed)
                for concurrency, streams in points:
                    for suffix, server in servers.items():
                        load = server.load(model, served, batching, protocol, rows_per_request) if suffix not in failed else None
                        if load is None:
                            continue
                        try:
                            row = _point(server, load, model, served, batching, protocol + suffix, concurrency, streams,
                                         seconds, workdir, rows_per_request)
                        except Exception as exc:
                            if not suffix:
                                raise
                            failed.add(suffix)
                            print(f"{OTHERS[suffix]} failed at {name} {protocol} {concurrency}: {exc!r}; its log: "
                                  f"{getattr(server, 'log_path', '-')}; its remaining points are left out", flush=True)
                            continue
                        print(format_row(row), flush=True)
                        results.append(row)
    return results


def open_loop(servers: dict, names, protocols, fractions, closed: list[Row], default_seconds: float, workdir: Path) -> list[Row]:
    """Each model's requests at fixed rates, fractions of the most requests/s its closed loop
    reached on that server and protocol (batching on)."""
    results = []
    for name in names:
        model = MODELS[name]
        if not model.open_loop:
            continue
        for protocol in protocols:
            if protocol not in OPEN_LOOP:
                continue
            connections, streams = OPEN_LOOP[protocol]
            for suffix, server in servers.items():
                capacity = max((r.requests_per_s for r in closed if (r.model, r.protocol, r.batching, r.offered_per_s) ==
                                (name, protocol + suffix, True, None)), default=0)
                load = server.load(model, name, True, protocol, 1)
                if not capacity or load is None:
                    continue
                for fraction in fractions:
                    row = _point(server, load, model, name, True, protocol + suffix, connections, streams,
                                 max(default_seconds, model.min_seconds), workdir, 1, rate=fraction * capacity)
                    row.offered_fraction = fraction
                    print(format_open_row(row), flush=True)
                    results.append(row)
    return results


def _point(server, load: Load, model: BenchModel, served: str, batching: bool, protocol: str, concurrency: int, streams: int,
           seconds: float, workdir: Path, rows_per_request: int, rate: float | None = None) -> Row:
    batches_before = server.batch_counts(served)
    if load.check:
        load.check()
    cpu_before, client_before = thread_cpu.sample(server.pids()), _children_cpu()
    if rate:
        stats = run_h2load(load.url, load.bodies[0], GRPC_HEADERS if load.grpc else JSON_HEADERS, concurrency, seconds, workdir,
                           streams, rate=rate, h1=not load.grpc)
    elif load.grpc:
        stats = run_h2load(load.url, load.bodies[0], GRPC_HEADERS, concurrency, seconds, workdir, streams)
    else:
        stats = run_wrk(load.url, load.bodies, concurrency, seconds, workdir)
    cpu = thread_cpu.by_role(cpu_before, thread_cpu.sample(server.pids()), server.role)
    client = _children_cpu() - client_before
    if load.check:
        load.check()  # still answering right after the load
    batches_after = server.batch_counts(served)
    mean_batch = None
    if batches_before is not None and batches_after[0] > batches_before[0]:
        mean_batch = (batches_after[1] - batches_before[1]) / (batches_after[0] - batches_before[0])
    requests = max(1, stats["requests"])
    return Row(model.name, protocol, batching, concurrency, stats["requests_per_s"], stats["requests_per_s"] * rows_per_request,
               stats["p50_ms"], stats["p90_ms"], stats["p99_ms"], stats["errors"], mean_batch, streams, offered_per_s=rate,
               cpu_us_per_request={role: seconds * 1e6 / requests for role, seconds in cpu.items()},
               client_cpu_us_per_request=client * 1e6 / requests)


def _children_cpu() -> float:
    """CPU seconds of this process's finished children: the load generators, which each point waits for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def format_row(r: Row) -> str:
    batch = f"{r.mean_batch_size:.1f}" if r.mean_batch_size else "-"
    concurrency = f"{r.concurrency}x{r.streams}" if r.streams > 1 else str(r.concurrency)
    return (f"| {r.model} | {r.protocol} | {'on' if r.batching else 'off'} | {concurrency} | {r.requests_per_s:,.0f} | "
            f"{r.rows_per_s:,.0f} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | {r.p99_ms:.1f} | {batch} | {r.errors} |")


def format_open_row(r: Row) -> str:
    batch = f"{r.mean_batch_size:.1f}" if r.mean_batch_size else "-"
    return (f"| {r.model} | {r.protocol} | {r.offered_per_s:,.0f} ({r.offered_fraction:.0%}) | {r.requests_per_s:,.0f} | "
            f"{r.p50_ms:.1f} | {r.p90_ms:.1f} | {r.p99_ms:.1f} | {batch} | {r.errors} |")


def point_label(r: Row) -> str:
    if r.offered_per_s:
        return f"{r.offered_per_s:,.0f}/s"
    return f"{r.concurrency}x{r.streams}" if r.streams > 1 else str(r.concurrency)


def cpu_table(rows: list[Row]) -> list[str]:
    roles = [role for role in thread_cpu.ROLES if any(role in r.cpu_us_per_request for r in rows)]
    lines = ["| model | protocol | batching | point | total | " + " | ".join(roles) + " | load generator (not in total) |",
             "|---|---|---|---:|---:|" + "---:|" * len(roles) + "---:|"]
    for r in rows:
        cells = [f"{r.cpu_us_per_request[role]:,.0f}" if role in r.cpu_us_per_request else "-" for role in roles]
        lines.append(f"| {r.model} | {r.protocol} | {'on' if r.batching else 'off'} | {point_label(r)} | "
                     f"{sum(r.cpu_us_per_request.values()):,.0f} | " + " | ".join(cells) + f" | {r.client_cpu_us_per_request:,.0f} |")
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tensorflow as tf

    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}, TensorFlow {tf.__version__}"


def markdown(rows: list[Row], limits: dict, machine_text: str) -> str:
    closed = [r for r in rows if r.offered_per_s is None]
    opened = [r for r in rows if r.offered_per_s is not None]
    lines = [f"Machine: {machine_text}", "",
             "| model | protocol | batching | concurrency | requests/s | rows/s | p50 ms | p90 ms | p99 ms | mean batch | errors |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [format_row(r) for r in closed]
    if opened:
        lines += ["", "Open loop (requests at a fixed rate: a fraction of the closed loop's most requests/s; "
                      f"REST {OPEN_LOOP['rest'][0]} HTTP/1.1 connections, gRPC {OPEN_LOOP['grpc'][0]} connections "
                      f"with up to {OPEN_LOOP['grpc'][1]} calls in flight on each):", "",
                  "| model | protocol | offered req/s | requests/s | p50 ms | p90 ms | p99 ms | mean batch | errors |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [format_open_row(r) for r in opened]
    lines += ["", "Server CPU time per request, µs, by thread role (all of the server's processes):", ""] + cpu_table(rows)
    lines += ["", "In-process limit (the served signature called directly, rows/s by batch size):", ""]
    lines += [f"- {name} ({RUNTIMES.get(name, '?')} runtime): " + ", ".join(f"batch {size}: {rate:,.0f}" for size, rate in limit.items())
              for name, limit in limits.items()]
    lines += ["", "Ratios (same run):", ""] + summary(closed, limits)
    return "\n".join(lines) + "\n"


OTHERS = {BASELINE: "the baseline", PYTRITON: "PyTriton", CEILING: "the native transport's ceiling"}


def summary(rows: list[Row], limits: dict) -> list[str]:
    """What batching and the native transport buy, and fastserve against the baseline, PyTriton and
    the transport's ceiling, as ratios within this run (closed-loop rows)."""
    def find(model, protocol, batching, concurrency, streams=1):
        return next((r for r in rows if (r.model, r.protocol, r.batching, r.concurrency, r.streams) ==
                     (model, protocol, batching, concurrency, streams)), None)

    out = []
    for name, limit in limits.items():
        max_batch = MODELS[name].batching["max_batch_size"]
        top = max(MODELS[name].concurrency)
        point = 64 if 64 in MODELS[name].concurrency else top
        for protocol in ("rest", "grpc", "grpc-aio"):
            on, off = find(name, protocol, True, point), find(name, protocol, False, point)
            if on is None:
                continue
            text = f"- {name} {protocol} at concurrency {point}: batching on {on.rows_per_s:,.0f} rows/s"
            if off is not None and off.rows_per_s:
                text += f" = {on.rows_per_s / off.rows_per_s:.1f}x batching off"
            if max_batch in limit:
                text += f", {on.rows_per_s / limit[max_batch]:.0%} of the in-process limit at max_batch_size {max_batch}"
            out.append(text)
        for r in rows:
            protocol, _, other = r.protocol.partition("@")
            if r.model != name or not other or not r.requests_per_s:
                continue
            new = find(name, protocol, r.batching, r.concurrency, r.streams)
            if new is not None:
                out.append(f"- {name} {protocol} batching {'on' if r.batching else 'off'} at {point_label(r)}: "
                           f"{new.requests_per_s:,.0f} req/s = {new.requests_per_s / r.requests_per_s:.2f}x {OTHERS['@' + other]} "
                           f"({r.requests_per_s:,.0f}), p99 {new.p99_ms:.1f} vs {r.p99_ms:.1f} ms")
        for connections, streams in MODELS[name].grpc_multiplexed:
            native, aio = find(name, "grpc", True, connections, streams), find(name, "grpc-aio", True, connections, streams)
            if native is not None and aio is not None and aio.requests_per_s:
                out.append(f"- {name} gRPC {connections}x{streams} streams, batching on: native {native.requests_per_s:,.0f} req/s "
                           f"= {native.requests_per_s / aio.requests_per_s:.1f}x grpc.aio ({aio.requests_per_s:,.0f})")
    return out


def plot(rows: list[Row], path: Path) -> None:
    """Per model: throughput and p99 against concurrency (closed loop), p99 against the offered rate (open loop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r.model for r in rows})
    protocols = sorted({r.protocol for r in rows})
    columns = 3 if any(r.offered_per_s for r in rows) else 2
    fig, axes = plt.subplots(len(names), columns, figsize=(5.5 * columns, 3.2 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for protocol in protocols:
            for batching in (True, False):
                label = f"{protocol}, batching {'on' if batching else 'off'}"
                style = "-" if batching else "--"
                ours = [r for r in rows if r.model == name and r.protocol == protocol and r.batching == batching]
                series = [r for r in ours if r.streams == 1 and r.offered_per_s is None]
                if series:
                    axes[i][0].plot([r.concurrency for r in series], [r.rows_per_s for r in series], style, marker="o", label=label)
                    axes[i][1].plot([r.concurrency for r in series], [r.p99_ms for r in series], style, marker="o", label=label)
                opened = [r for r in ours if r.offered_per_s]
                if opened:
                    axes[i][2].plot([100 * r.offered_fraction for r in opened], [r.p99_ms for r in opened], style, marker="o",
                                    label=label)
        axes[i][0].set(title=f"{name}: throughput", xlabel="concurrency", ylabel="rows/s", xscale="log", yscale="log")
        axes[i][1].set(title=f"{name}: p99 latency", xlabel="concurrency", ylabel="ms", xscale="log", yscale="log")
        axes[i][0].legend(fontsize=7)
        if columns == 3:
            axes[i][2].set(title=f"{name}: open loop, p99", xlabel="offered, % of the closed loop's most requests/s",
                           ylabel="ms", yscale="log")
            axes[i][2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI mode: half_plus_two and mlp, concurrency 1 and 64, short runs, "
                                                        "no PyTriton, no open loop")
    p.add_argument("--models", help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--protocols", default="rest,grpc,grpc-aio", help="grpc: the default transport; grpc-aio: grpc.aio")
    p.add_argument("--seconds", type=float, help="load duration per point (default 5, quick 2)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--cache", help="where exported models are kept (default OUT/models)")
    p.add_argument("--baseline", help="another fastserve checkout, built in place (python setup.py build_ext --inplace "
                                      "build_py): every point also runs against it, right after this one; the ratios compare them")
    p.add_argument("--pytriton", action=argparse.BooleanOptionalAction, help="PyTriton beside fastserve (default: on, quick: off)")
    p.add_argument("--pytriton-venv", default=str(triton_peer.DEFAULT_VENV), help="PyTriton's venv, created on first use")
    p.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                   help="the native gRPC transport's ceiling beside every gRPC point, batching on")
    p.add_argument("--open-loop", help="fractions of the closed loop's capacity to offer at a fixed rate, half_plus_two "
                                       "and mlp, REST and gRPC (default 0.25,0.5,0.75,0.9; quick: none; '' for none)")
    args = p.parse_args(argv)
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            print(f"{tool} is missing: apt-get install wrk nghttp2-client", file=sys.stderr)
            return 2
    names = args.models.split(",") if args.models else (["half_plus_two", "mlp"] if args.quick else list(MODELS))
    unknown = set(names) - set(MODELS)
    if unknown:
        p.error(f"unknown models: {', '.join(sorted(unknown))}")
    if args.quick:
        for name in names:
            MODELS[name].concurrency = (1, 64)
            MODELS[name].batch_sizes = (MODELS[name].batching["max_batch_size"],)
    seconds = args.seconds or (2 if args.quick else 5)
    open_loop_text = args.open_loop if args.open_loop is not None else ("" if args.quick else "0.25,0.5,0.75,0.9")
    fractions = [float(f) for f in open_loop_text.split(",") if f]
    peer_models = {name: MODELS[name] for name in names if MODELS[name].peer} if (
        args.pytriton if args.pytriton is not None else not args.quick) else {}
    ceiling = args.ceiling and any((REPO / "fastserve" / "_native").glob("grpc_transport*.so"))
    out = Path(args.out)
    cache = (Path(args.cache) if args.cache else out / "models").resolve()  # models.yaml lives elsewhere
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    machine_text = machine()
    if peer_models:
        pytriton_python = triton_peer.ensure_venv(Path(args.pytriton_venv))
        machine_text += f", PyTriton {triton_peer.version(pytriton_python)}"
    ensure_exported(cache, names)
    limits = {name: in_process_limit(cache, MODELS[name], 0.5 if args.quick else 2.0) for name in names}
    for name, limit in limits.items():
        print(f"in-process {name} ({RUNTIMES[name]} runtime): " + ", ".join(f"batch {s}: {r:,.0f} rows/s" for s, r in limit.items()), flush=True)
    protocols = args.protocols.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # grpc-aio needs its own server (--grpc_transport=aio); the others share the default one, and the peers
        for transport, wanted in (("", [p for p in protocols if p != "grpc-aio"]), ("aio", ["grpc-aio"] if "grpc-aio" in protocols else [])):
            if not wanted:
                continue
            servers = {"": Server(cache, names, Path(tmp) / "current", transport)}
            try:
                for name in names:  # the in-process limit is only comparable on the same runtime
                    if f"model {name} version 1: {RUNTIMES[name]} runtime" not in servers[""].log():
                        raise RuntimeError(f"the server did not serve {name} on the {RUNTIMES[name]} runtime:\n{servers[''].log()}")
                if args.baseline:
                    servers[BASELINE] = Server(cache, names, Path(tmp) / "baseline", transport, Path(args.baseline).resolve())
                if not transport and peer_models:
                    servers[PYTRITON] = triton_peer.TritonPeer(pytriton_python, cache, peer_models, out / "pytriton")  # its log stays
                if not transport and ceiling:
                    servers[CEILING] = Ceiling(servers[""], Path(tmp))
                closed = sweep(servers, names, wanted, seconds, Path(tmp))
                fastserve = {suffix: servers[suffix] for suffix in ("", BASELINE) if suffix in servers}
                rows += closed + open_loop(fastserve, names, wanted, fractions, closed, seconds, Path(tmp))
            finally:
                for server in servers.values():
                    server.stop()
    for r in rows:
        r.in_process_rows_per_s = limits[r.model]
    (out / "results.json").write_text(json.dumps({"machine": machine_text, "quick": args.quick, "rows": [asdict(r) for r in rows]}, indent=1))
    table = markdown(rows, limits, machine_text)
    (out / "results.md").write_text(table)
    plot(rows, out / "results.png")
    print("\n" + table)
    print(f"wrote {out / 'results.json'}, results.md, results.png in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
