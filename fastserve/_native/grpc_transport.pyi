"""gRPC server on libgrpc++'s completion queue, handing call batches to Python (csrc/grpc_transport.cc)."""
from typing import NamedTuple

class Call(NamedTuple):
    """A call whose request has arrived."""
    id: int  # for respond(), and in Handoff.cancelled
    method: str  # /package.Service/Method
    payload: bytes  # the serialized request
    metadata: tuple[tuple[str, str | bytes], ...]  # -bin values as bytes
    timeout: float | None  # seconds left before the call's deadline

class Handoff(NamedTuple):
    """What take() hands over."""
    calls: list[Call]  # whose requests arrived since the last take()
    cancelled: list[int]  # ids of taken calls whose client went away or whose deadline passed
    expired: list[str]  # methods of calls answered DEADLINE_EXCEEDED on arrival (never taken), for the metrics
    refused: int  # connections closed at max_connections since the last take(), for the metrics
    notices: list[str]  # for the log: accepting failed (out of descriptors) or resumed, the connection cap reached or left

# respond()'s records: (call id, status code (0: OK), message, payload: the serialized response when OK).
# A message of a stream may have several answers: status -1 writes one and more follow; 0 with no
# payload completes it.
Reply = tuple[int, int, str, bytes | None]

class Transport:
    def __init__(self, addresses: list[str], max_receive_bytes: int, max_send_bytes: int,
                 tls: tuple[bytes, bytes, bytes | None, bool] | None = None, max_connections: int = 0,
                 max_concurrent_streams: int = 0, streaming_methods: list[str] = (),
                 fixed_reply: bytes | None = None) -> None:
        """tls: (private key PEM, certificate chain PEM, root certificates PEM, require a client
        certificate); it applies to TCP addresses, unix: sockets stay plain. max_connections: open
        connections at most (0: no cap); max_concurrent_streams: calls in flight on one connection
        (0: gRPC's default). streaming_methods: methods served as bidirectional streams: each
        request message is a Call of its own; OK answers are written to the stream in request
        order, another status ends the stream with it. fixed_reply: bench-only (bench/ceiling.py):
        every unary call is answered OK with these bytes from C++, and none is handed to Python.
        The transport's threads are named fastserve-cq and fastserve-acpt (/proc/PID/task/*/comm)."""
    def start(self) -> list[int]:
        """Bind and serve; the bound port of each address (0 for unix: ones). Raises OSError."""
    def fileno(self) -> int:
        """An eventfd that is readable when calls (or cancellations) wait for take()."""
    def take(self) -> Handoff: ...
    def respond(self, replies: list[Reply]) -> None:
        """Answer calls; the completion-queue thread sends them (Python never waits on gRPC)."""
    def shutdown(self, grace_s: float) -> None:
        """Stop accepting; accepted calls have grace_s seconds to be answered, then are cancelled."""
