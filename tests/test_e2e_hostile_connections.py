"""Hostile clients never starve the server: the transports' connection limits, end to end.

Slow request heads get 408 and oversized ones 431 (URLs 414) before they are parsed, idle
connections are closed, connections beyond the caps are refused while everyone connected
is served, a client that pipelines without reading holds a bounded share of the server
and its work stops with its connection, and gRPC (native and grpc.aio) accepts connections
again once the process has file descriptors. With the default limits, 20,000 idle
connections and a 128 MB header leave both gRPC transports serving and REST clients
answered. Probe latencies are the p99 of several samples, bounded at 100 ms.
"""
import re
import resource
import socket
import threading
import time

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import EXAMPLE_MODELS

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
PIPELINED = 8
REST_CAP = 50
GRPC_CAP = 10
STATUS = b"GET /v1/models/half_plus_two HTTP/1.1\r\nHost: test\r\n\r\n"
_BODY = b'{"instances": [[1.0]]}'
PREDICT = b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "models.yaml"
    path.write_text(
        "server:\n  file_system_poll_wait_seconds: 0\n"
        f"models:\n  - name: half_plus_two\n    base_path: {EXAMPLE_MODELS / 'half_plus_two'}\n"
    )
    return path


@pytest.fixture(scope="module")
def strict(start_server, config):
    """Short clocks and a small pipelining window, so that the tests are quick."""
    return start_server([
        f"--config={config}", f"--rest_header_timeout_seconds={HEADER_TIMEOUT}",
        f"--rest_idle_timeout_seconds={IDLE_TIMEOUT}", f"--rest_max_pipelined_requests={PIPELINED}",
    ])


@pytest.fixture(scope="module")
def capped(start_server, config):
    return start_server([
        f"--config={config}", f"--rest_max_connections={REST_CAP}", f"--grpc_max_connections={GRPC_CAP}", "--grpc_max_concurrent_streams=16",
    ])


# ---------------------------------------------------------------- helpers

def connect(server, timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=timeout)
    return s


def read_until_closed(s: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def read_response(s: socket.socket) -> bytes:
    """One response of a keep-alive connection (head and Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"the server closed the connection: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head


def probe_latencies(server, count: int, pause: float = 0.02, session: requests.Session | None = None) -> list[float]:
    """Seconds each of `count` status requests took, on a connection of their own (or the session's)."""
    latencies = []
    with session or requests.Session() as client:
        for _ in range(count):
            started = time.perf_counter()
            assert client.get(f"{server.rest}/v1/models/half_plus_two", timeout=30).status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(pause)
    return latencies


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(0.99 * (len(samples) - 1))]


def metric(server, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include these."""
    total = 0.0
    for line in requests.get(f"{server.rest}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_mb(server) -> float:
    with open(f"/proc/{server.proc.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def grpc_serving(server, timeout: float = 2) -> bool:
    """A health check on a new connection of its own (channels share none)."""
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- request heads

def test_slowloris_heads_get_408_while_others_are_served(strict):
    before = metric(strict, "fastserve_rejected_requests_total", reason="header_timeout")
    loris = [connect(strict) for _ in range(20)]
    for s in loris:
        s.sendall(b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: test\r\n")
    stop = threading.Event()

    def drip():  # a byte every 0.2 s: the head keeps coming, and never arrives
        while not stop.wait(0.2):
            for s in loris:
                try:
                    s.send(b"x")
                except OSError:
                    pass

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    started = time.monotonic()
    latencies = probe_latencies(strict, 30)
    answers = [read_until_closed(s) for s in loris]
    elapsed = time.monotonic() - started
    stop.set()
    dripping.join()
    for s in loris:
        s.close()
    assert all(answer.startswith(b"HTTP/1.1 408 Request Timeout") for answer in answers), answers[0][:200]
    assert elapsed < HEADER_TIMEOUT + 8  # 408 after about a second, then the connection is closed
    assert p99(latencies) < 0.1, sorted(latencies)
    assert metric(strict, "fastserve_rejected_requests_total", reason="header_timeout") >= before + 20


def test_connection_that_sends_nothing_is_closed(strict):
    s = connect(strict)
    assert read_until_closed(s) == b""
    s.close()


def test_oversized_head_is_431_before_it_is_complete(strict):
    before = metric(strict, "fastserve_rejected_requests_total", reason="header_too_large")
    s = connect(strict)
    # 1 MB of one header that never ends: refused on its size, not at the header timeout (408)
    s.sendall(b"GET /v1/models/half_plus_two HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 1_000_000)
    answer = read_until_closed(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), answer[:200]
    assert b"larger than the limit of 65536 bytes" in answer
    assert metric(strict, "fastserve_rejected_requests_total", reason="header_too_large") == before + 1
    # a head just under the limit is served
    assert requests.get(f"{strict.rest}/v1/models/half_plus_two", headers={"X-Big": "a" * 60_000}, timeout=30).status_code == 200
    assert p99(probe_latencies(strict, 10)) < 0.1


def test_too_long_url_is_414(strict):
    s = connect(strict)
    s.sendall(b"GET /v1/models/" + b"m" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = read_until_closed(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 414"), answer[:200]
    assert b"longer than the limit of 8192 bytes" in answer
    assert requests.get(f"{strict.rest}/v1/models/" + "m" * 8000, timeout=30).status_code == 404  # under the limit: parsed
    assert requests.get(f"{strict.rest}/v1/models/half_plus_two", timeout=30).status_code == 200


def test_idle_connection_is_closed_and_a_busy_one_is_not(strict):
    busy = connect(strict)
    for _ in range(int(IDLE_TIMEOUT / 0.5) + 3):  # longer than the idle timeout, never idle that long
        busy.sendall(STATUS)
        assert read_response(busy).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)
    busy.close()
    idle = connect(strict)
    idle.sendall(STATUS)
    assert read_response(idle).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert read_until_closed(idle, timeout=IDLE_TIMEOUT + 8) == b""
    assert time.monotonic() - started >= IDLE_TIMEOUT * 0.7
    idle.close()


# ---------------------------------------------------------------- pipelining

def test_unread_pipelining_is_bounded_and_stops_with_its_connection(strict):
    """One connection writes pipelined predicts for 3 s and never reads: the server reads it only as
    its answers drain (PIPELINED in flight), so its memory stays flat and other clients are served;
    once it closes, its work stops."""
    rss_before = rss_mb(strict)
    flood = connect(strict)
    flood.setblocking(False)
    burst = memoryview(PREDICT * 1000)
    sent, peak = 0, rss_before
    latencies: list[float] = []
    prober = threading.Thread(target=lambda: latencies.extend(probe_latencies(strict, 40, pause=0.05)))
    prober.start()
    stop = time.monotonic() + 3
    while time.monotonic() < stop:
        try:
            sent += flood.send(burst[sent % len(burst):])
        except BlockingIOError:
            time.sleep(0.005)
        peak = max(peak, rss_mb(strict))
    prober.join()
    flood.close()
    time.sleep(0.5)
    done = metric(strict, "fastserve_model_requests_total", api="Predict")
    time.sleep(1.0)
    assert metric(strict, "fastserve_model_requests_total", api="Predict") == done  # its work stopped
    assert peak - rss_before < 100, (rss_before, peak)
    assert rss_mb(strict) - rss_before < 100
    assert p99(latencies) < 0.1, sorted(latencies)
    assert p99(probe_latencies(strict, 10)) < 0.1


def test_pipelined_requests_are_answered_in_order(strict):
    s = connect(strict)
    requests_ = [b"GET /v1/models/half_plus_two HTTP/1.1\r\nHost: t\r\n\r\n", PREDICT] * (3 * PIPELINED)
    s.sendall(b"".join(requests_) + b"GET /v1/models/nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    answer = read_until_closed(s)
    s.close()
    assert re.findall(rb"HTTP/1.1 (\d+)", answer) == [b"200"] * len(requests_) + [b"404"]
    assert answer.count(b'"predictions"') == 3 * PIPELINED


# ---------------------------------------------------------------- connection caps

def test_connections_beyond_the_caps_are_refused_while_others_are_served(capped):
    before = metric(capped, "fastserve_rejected_requests_total", reason="too_many_connections")
    held = [connect(capped) for _ in range(REST_CAP)]
    for s in held:
        s.sendall(STATUS)
        assert read_response(s).startswith(b"HTTP/1.1 200")
    extra = [connect(capped) for _ in range(10)]
    answers = [read_until_closed(s) for s in extra]
    for s in extra:
        s.close()
    assert all(answer.startswith(b"HTTP/1.1 503 Service Unavailable") for answer in answers), answers[0][:200]
    assert b"too many connections" in answers[0]
    for s in held:  # everyone connected is served
        s.sendall(STATUS)
        assert read_response(s).startswith(b"HTTP/1.1 200")
    assert grpc_serving(capped)

    channels = [grpc.insecure_channel(capped.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(GRPC_CAP)]
    for channel in channels:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert not grpc_serving(capped, timeout=1)  # one more gRPC connection is refused
    channels.pop().close()
    deadline = time.monotonic() + 10  # ... until one ends (the server closes its end soon after the client)
    while not grpc_serving(capped):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for channel in channels:
        channel.close()

    for s in held:
        s.close()
    time.sleep(0.2)
    assert requests.get(f"{capped.rest}/v1/models/half_plus_two", timeout=30).status_code == 200
    assert metric(capped, "fastserve_rejected_requests_total", reason="too_many_connections") >= before + 10


# ---------------------------------------------------------------- file descriptors

@pytest.mark.parametrize("transport", ["native", "aio"])
def test_grpc_accepts_again_after_descriptors_ran_out(start_server, config, transport):
    """REST connections take every descriptor the process has (its limit is lowered under it, below
    its REST cap): gRPC cannot accept meanwhile, and accepts again once they are closed (libgrpc 1.51's
    own listener never did: the native transport accepts on its own and retries)."""
    server = start_server([f"--config={config}", f"--grpc_transport={transport}"])
    limit = 128
    resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
    held = []
    for _ in range(2 * limit):
        try:
            s = connect(server, timeout=5)
            held.append(s)
            s.sendall(STATUS)
            if not read_response(s).startswith(b"HTTP/1.1 200"):
                break
        except (OSError, AssertionError):  # accepted and closed at once: the descriptors ran out
            break
    else:
        pytest.fail(f"{2 * limit} REST connections on a process limited to {limit} descriptors")
    for _ in range(5):  # a descriptor the process frees meanwhile is taken by one more connection
        if not grpc_serving(server, timeout=1):
            break
        try:
            held.append(connect(server, timeout=2))
        except OSError:
            pass
    else:
        pytest.fail("gRPC kept accepting connections with every descriptor taken")
    for s in held:
        s.close()
    deadline = time.monotonic() + 10
    while not grpc_serving(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert grpc_serving(server)
    assert requests.get(f"{server.rest}/v1/models/half_plus_two", timeout=30).status_code == 200
    if transport == "native":
        assert "gRPC cannot accept connections: Too many open files" in server.log()
        assert "gRPC accepts connections again" in server.log()
    server.stop()


# ---------------------------------------------------------------- floods, with the default limits

@pytest.fixture(scope="module", params=["native", "aio"])
def default_limits(request, start_server, config):
    return start_server([f"--config={config}", f"--grpc_transport={request.param}"])


def keep_alive_probe(server) -> "requests.Session":
    """A client connected before the flood (a new one may meet the connection cap)."""
    session = requests.Session()
    assert session.get(f"{server.rest}/v1/models/half_plus_two", timeout=30).status_code == 200
    return session


def test_twenty_thousand_idle_connections(default_limits):
    """As many idle connections as this process may open (20,000 here): the server holds its REST
    cap of them (half its descriptors), refuses the rest at once, and keeps serving its clients
    and gRPC; once they close, new connections are served again."""
    server = default_limits
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    probe = keep_alive_probe(server)
    rss_before = rss_mb(server)
    idle: list[socket.socket] = []
    try:
        for _ in range(min(20_000, hard - 300)):
            try:
                idle.append(socket.create_connection(("127.0.0.1", server.rest_port), timeout=10))
            except OSError:  # this process is out of descriptors or ports
                break
        assert len(idle) >= 10_000
        time.sleep(1)  # accepted (or refused) by now
        latencies = probe_latencies(server, 50, session=probe)
        assert p99(latencies) < 0.1, sorted(latencies)
        assert grpc_serving(server)
        fresh = requests.get(f"{server.rest}/v1/models/half_plus_two", timeout=30)  # served, or refused at the cap at once
        assert fresh.status_code in (200, 503), fresh.text
        assert rss_mb(server) - rss_before < 300, (rss_before, rss_mb(server))
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    deadline = time.monotonic() + 10
    while requests.get(f"{server.rest}/v1/models/half_plus_two", timeout=30).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert grpc_serving(server)


def test_a_128_mb_header(default_limits):
    """Refused 431 once the head passes 64 KiB; the rest is read and dropped (a short linger), never parsed."""
    server = default_limits
    probe = keep_alive_probe(server)
    rss_before = rss_mb(server)
    answer = []

    def flood():
        s = connect(server)
        chunk = b"a" * (1 << 20)
        try:
            s.sendall(b"GET /v1/models/half_plus_two HTTP/1.1\r\nHost: test\r\nX-Big: ")
            for _ in range(128):
                s.sendall(chunk)
        except OSError:  # the server closed the connection
            pass
        answer.append(read_until_closed(s))
        s.close()

    flooder = threading.Thread(target=flood)
    flooder.start()
    latencies = probe_latencies(server, 50, session=probe)
    flooder.join()
    assert answer[0].startswith(b"HTTP/1.1 431"), answer[0][:200]
    assert p99(latencies) < 0.1, sorted(latencies)
    assert grpc_serving(server)
    assert rss_mb(server) - rss_before < 50, (rss_before, rss_mb(server))
