"""One gRPC call, whatever the transport: authenticate, parse, serve, map errors.

Both gRPC transports (native and grpc.aio) serve the services' method tables (the
kinds of entries are in services/methods.py) the same way, so authentication, parsing, deadlines, status codes, metrics and the request log are the
same on both. A plain method (`Method`) runs its handler and gives the Outcome back; an
inference method (`InferMethod`) turns the request into an InferenceCall that the
transport hands to the pipeline with the others that arrived with it, and that answers
through the reply the transport gave it.
"""
import asyncio
import logging
import time
from typing import NamedTuple
from collections.abc import AsyncIterator, Callable

from google.protobuf.message import DecodeError
from grpc import StatusCode

from fastserve import limits, metrics, tracing
from fastserve.auth import TokenAuth
from fastserve.errors import ServingError, internal, invalid_argument
from fastserve.logs import request_log
from fastserve.pipeline.call import Inference, InferenceCall, StreamedInference
from fastserve.pipeline.member import PRIORITY_KEY, priority_level
from fastserve.services.methods import ServerStream, Streamed

log = logging.getLogger(__name__)


_IN_FLIGHT = metrics.in_flight("GRPC")


class Outcome(NamedTuple):
    code: StatusCode
    message: str
    payload: bytes | None  # the serialized response when code is OK


def _metadata(metadata, wanted: str) -> str | bytes | None:
    """A call's metadata value of key `wanted`, if it has one (native gRPC hands a value that
    is not UTF-8 over as bytes)."""
    for key, value in metadata or ():
        if key == wanted:
            return value
    return None


def _authorization(metadata) -> str | None:
    value = _metadata(metadata, "authorization")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _model_label(request, is_served: Callable[[str], bool]) -> str:
    """The model a request names, for metrics; names that are not served share one label."""
    spec = getattr(request, "model_spec", None)  # TF Serving's; V2 names it model_name (infer) or name
    name: str = spec.name if spec is not None else getattr(request, "model_name", "") or getattr(request, "name", "")
    return name if is_served(name) else metrics.UNKNOWN_MODEL


def count_gone_on_arrival(path: str, code: StatusCode = StatusCode.DEADLINE_EXCEEDED) -> None:
    """A call that expired (or was cancelled) before it reached a handler: the transport answered it."""
    if code == StatusCode.DEADLINE_EXCEEDED:
        metrics.rejected("deadline_exceeded")
    _finish(path.rsplit("/", 1)[-1], metrics.UNKNOWN_MODEL, code, time.perf_counter())


def _finish(api: str, model: str, code: StatusCode, started: float) -> None:
    seconds = metrics.request_series("GRPC", api, model).done(code, started)
    request_log.record("GRPC", api, model, code, seconds)


class _Entry:
    """What every method does first: authenticate, check the deadline, parse the request."""

    def __init__(self, path: str, request_class, auth: TokenAuth | None, is_served: Callable[[str], bool]):
        self.request_class = request_class
        self.api = path.rsplit("/", 1)[1]
        surface = TokenAuth.grpc_surface(path)
        self.auth = auth if auth is not None and auth.enabled and surface != "open" else None
        self.admin = surface == "admin"
        self.is_served = is_served

    def parse(self, payload: bytes, metadata, timeout: float | None):
        if self.auth:
            self.auth.check(_authorization(metadata), self.admin)
        if timeout is not None:
            limits.check_deadline(time.monotonic() + timeout)
        try:
            return self.request_class.FromString(payload)
        except DecodeError as exc:
            raise invalid_argument(f"malformed {self.request_class.DESCRIPTOR.full_name}: {exc}") from None


class Method(_Entry):
    """A plain method of a service's table, served from and to raw bytes."""

    def __init__(self, path: str, request_class, handler, auth: TokenAuth | None, is_served: Callable[[str], bool]):
        super().__init__(path, request_class, auth, is_served)
        self.handler = handler
        self.is_async = asyncio.iscoroutinefunction(handler)

    async def __call__(self, payload: bytes, metadata, timeout: float | None) -> Outcome:
        """Serve one call; `timeout` is the seconds left before the client's deadline (None: no deadline).

        Raises CancelledError when the call is cancelled (the client went away or its
        deadline passed): there is no one to answer then.
        """
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        model = metrics.UNKNOWN_MODEL
        _IN_FLIGHT.inc()
        try:
            request = self.parse(payload, metadata, timeout)
            model = _model_label(request, self.is_served)
            response = await self.handler(request) if self.is_async else self.handler(request)
            body = response.SerializeToString()
        except ServingError as exc:
            error = exc
        except asyncio.CancelledError:
            expired = deadline is not None and time.monotonic() >= deadline
            _finish(self.api, model, StatusCode.DEADLINE_EXCEEDED if expired else StatusCode.CANCELLED, started)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            log.exception("unexpected error in a gRPC call")
            error = internal(exc)
        else:
            _finish(self.api, model, StatusCode.OK, started)
            return Outcome(StatusCode.OK, "", body)
        finally:
            _IN_FLIGHT.dec()
        _finish(self.api, model, error.code, started)
        return Outcome(error.code, error.message, None)


class InferMethod(_Entry):
    """An inference method: its request becomes a call for the pipeline."""

    def __init__(self, path: str, entry: Inference, auth: TokenAuth | None, is_served: Callable[[str], bool]):
        super().__init__(path, entry.request_class, auth, is_served)
        self.make_call = entry.make_call

    def start(self, payload: bytes, metadata, timeout: float | None) -> InferenceCall:
        """The call for the pipeline; raises ServingError (counted) when the request is refused.
        The transport sets its reply and counts the calls it hands to the pipeline in flight
        (the pipeline counts them out as it answers)."""
        started = time.perf_counter()
        request = None
        try:
            request = self.parse(payload, metadata, timeout)
            call = self.make_call(request)
            priority = _metadata(metadata, PRIORITY_KEY)
            if priority is not None and not call.priority:  # the request's own parameters.priority comes first
                call.priority = priority_level(priority)
        except Exception as exc:  # noqa: BLE001 - a request that breaks decoding fails alone
            error = exc if isinstance(exc, ServingError) else internal(exc)
            if error is not exc:
                log.exception("unexpected error decoding a gRPC request")
            _finish(self.api, _model_label(request, self.is_served) if request is not None else metrics.UNKNOWN_MODEL,
                    error.code, started)
            raise error from None
        call.entrypoint = "GRPC"
        call.started = started
        if timeout is not None:
            call.deadline = time.monotonic() + timeout
        if tracing.enabled():
            tracing.start_request(call, metadata)
        return call


class MessageStream(Method):
    """A bidirectional stream whose messages are each served as a Method's call; the answers go
    back in order, and an error ends the stream."""


class ResponseStream(_Entry):
    """One request answered by a stream of responses (a server stream: health Watch)."""

    def __init__(self, path: str, request_class, handler, auth: TokenAuth | None, is_served: Callable[[str], bool]):
        super().__init__(path, request_class, auth, is_served)
        self.handler = handler

    async def responses(self, payload: bytes, metadata, timeout: float | None) -> AsyncIterator[bytes]:
        """The serialized responses; raises ServingError when the request is refused (before any)."""
        request = self.parse(payload, metadata, timeout)
        async for response in self.handler(request):
            yield response.SerializeToString()


class StreamMethod(InferMethod):
    """A stream of inference requests: each message starts as an InferMethod call; its answer
    is framed as a stream message."""

    def __init__(self, path: str, entry: StreamedInference, auth: TokenAuth | None, is_served: Callable[[str], bool]):
        super().__init__(path, Inference(entry.request_class, entry.make_call), auth, is_served)
        self.frame = entry.frame


def method_table(
    methods: dict, auth: TokenAuth | None = None, is_served: Callable[[str], bool] = lambda name: bool(name),
) -> dict[str, Method | ResponseStream | InferMethod]:
    """{"/package.Service/Method": Method (or MessageStream) | ResponseStream | InferMethod (or
    StreamMethod)} from the services' method tables.

    is_served(name) tells whether a model is served (its name becomes a metrics label).
    """
    table: dict[str, Method | ResponseStream | InferMethod] = {}
    for path, entry in methods.items():
        if isinstance(entry, StreamedInference):
            table[path] = StreamMethod(path, entry, auth, is_served)
        elif isinstance(entry, Inference):
            table[path] = InferMethod(path, entry, auth, is_served)
        elif isinstance(entry, ServerStream):
            table[path] = ResponseStream(path, *entry, auth, is_served)
        else:  # (request class, handler): a unary method, or each message of a Streamed one
            request_class, handler = entry
            table[path] = (MessageStream if isinstance(entry, Streamed) else Method)(path, request_class, handler, auth, is_served)
    return table
