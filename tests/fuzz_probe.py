"""The fuzzer's probe of a server, in a process of its own, and the HTTP/1.1 client it shares with the fuzzer.

    python -m tests.fuzz_probe REST_PORT GRPC_TARGET GRPC_REQUEST_HEX

Every INTERVAL seconds one REST predict and one gRPC Predict (GRPC_REQUEST_HEX: its message)
of half_plus_two, each over a connection of its own that stays open. A process of its own, so
that what it measures is the server: the fuzzer's pauses (its garbage collections, the GIL its
threads share) held a probe thread in the fuzzer's process up to 2 s. Each line read on stdin
asks for the latencies and failures since the last one, written as one JSON line on stdout;
the end of stdin stops it. It imports neither TensorFlow nor hypothesis: it starts in moments.
"""
import json
import socket
import sys
import threading
import time

import grpc

INTERVAL = 0.05
TIMEOUT = 10.0  # seconds any one answer may take; longer is a hang
PROBE_REST = b'{"instances": [[1.0]]}'


class RestClient:
    """HTTP/1.1 over one kept-alive socket, the request line and headers exactly as given."""

    def __init__(self, port: int):
        self.port = port
        self._sock: socket.socket | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, method: str, target: bytes, body: bytes = b"", headers=()) -> tuple[int, dict, bytes]:
        head = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: fuzz", b"Content-Length: %d" % len(body)]
        head += [name + b": " + value for name, value in headers]
        data = b"\r\n".join(head) + b"\r\n\r\n" + body
        for attempt in (0, 1):
            if self._sock is None:
                self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
            try:
                self._sock.sendall(data)
                status, response_headers, response_body = read_response(self._sock)
            except (ConnectionError, EOFError) as exc:  # a kept-alive connection the server closed: once more
                self.close()
                if attempt:
                    raise ConnectionError(f"the server closed the connection: {exc}") from None
                continue
            if response_headers.get("connection", "").lower() == "close":
                self.close()
            return status, response_headers, response_body
        raise AssertionError("unreachable")


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response (Content-Length framed, as fastserve writes them) from sock."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed inside a response body")
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


class Probe:
    def __init__(self, rest_port: int, grpc_target: str, grpc_request: bytes):
        self._rest = RestClient(rest_port)
        # a connection of its own: channels to one target otherwise share one
        channel = grpc.insecure_channel(grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])
        self._predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        self._grpc_request = grpc_request
        self._lock = threading.Lock()
        self._taken = {"rest": [], "grpc": [], "failures": []}

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(INTERVAL):
            try:
                started = time.perf_counter()
                status, _, body = self._rest.request("POST", b"/v1/models/half_plus_two:predict", PROBE_REST)
                assert (status, json.loads(body)) == (200, {"predictions": [[2.5]]}), (status, body)
                rest = time.perf_counter() - started
                started = time.perf_counter()
                self._predict(self._grpc_request, timeout=TIMEOUT)
                grpc_ = time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - counted, and the probe goes on
                self._rest.close()
                with self._lock:
                    self._taken["failures"].append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self._taken["rest"].append(rest)
                self._taken["grpc"].append(grpc_)

    def take(self) -> dict:
        with self._lock:
            taken, self._taken = self._taken, {"rest": [], "grpc": [], "failures": []}
        return taken


def main() -> None:
    probe = Probe(int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3]))
    stop = threading.Event()
    thread = threading.Thread(target=probe.run, args=(stop,))
    thread.start()
    for _ in sys.stdin:
        print(json.dumps(probe.take()), flush=True)
    stop.set()
    thread.join()


if __name__ == "__main__":
    main()
