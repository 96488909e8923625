"""gRPC server on libgrpc++'s completion queue, handing call batches to Python (csrc/grpc_transport.cc)."""
from collections.abc import Sequence
from typing import Any, Final, TypeAlias, final

from _typeshed import structseq

# Call and Handoff are C struct sequences (PyStructSequence): tuples with named fields.
@final
class Call(structseq[Any], tuple[int, str, bytes, tuple[tuple[str, str | bytes], ...], float | None]):
    """A call whose request has arrived."""
    __match_args__: Final = ("id", "method", "payload", "metadata", "timeout")
    @property
    def id(self) -> int: ...  # for respond(), and in Handoff.cancelled
    @property
    def method(self) -> str: ...  # /package.Service/Method
    @property
    def payload(self) -> bytes: ...  # the serialized request
    @property
    def metadata(self) -> tuple[tuple[str, str | bytes], ...]: ...  # -bin values as bytes
    @property
    def timeout(self) -> float | None: ...  # seconds left before the call's deadline

@final
class Handoff(structseq[Any], tuple[list[Call], list[int], list[str], int, list[str]]):
    """What take() hands over."""
    __match_args__: Final = ("calls", "cancelled", "expired", "refused", "notices")
    @property
    def calls(self) -> list[Call]: ...  # whose requests arrived since the last take()
    @property
    def cancelled(self) -> list[int]: ...  # ids of taken calls whose client went away or whose deadline passed
    @property
    def expired(self) -> list[str]: ...  # methods of calls answered DEADLINE_EXCEEDED on arrival (never taken), for the metrics
    @property
    def refused(self) -> int: ...  # connections closed at max_connections since the last take(), for the metrics
    @property
    def notices(self) -> list[str]: ...  # for the log: accepting failed (out of descriptors) or resumed, the connection cap reached or left

# respond()'s records: (call id, status code (0: OK), message, payload: the serialized response when OK).
# A message of a stream may have several answers: status -1 writes one and more follow; 0 with no
# payload completes it.
Reply: TypeAlias = tuple[int, int, str, bytes | None]  # for annotations only: not in the module

@final
class Transport:
    def __init__(self, addresses: list[str], max_receive_bytes: int, max_send_bytes: int,
                 tls: tuple[bytes, bytes, bytes | None, bool] | None = None, max_connections: int = 0,
                 max_concurrent_streams: int = 0, streaming_methods: Sequence[str] = (),
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
