"""gRPC transport on grpc.aio: drives the services' method tables over raw bytes.

It runs its own asyncio loop on its own thread, beside the REST frontend's uvloop.
"""
import asyncio
import logging
import threading
from collections.abc import Callable

import grpc
from grpc import aio

from fastserve import metrics
from fastserve.auth import TokenAuth
from fastserve.config import MAX_MESSAGE_BYTES
from fastserve.errors import ServingError
from fastserve.pipeline.pipeline import Pipeline
from fastserve.services.catalog import Services
from fastserve.transports.grpc_calls import (
    InferMethod, MessageStream, Method, ResponseStream, StreamMethod, method_table,
)
from fastserve.tls import SSLConfig, grpc_credentials

log = logging.getLogger(__name__)


def _unary_handler(method: Method):
    """grpc.aio's side of one plain method: the shared step does the work, this sends its outcome."""

    async def call(request_bytes: bytes, context: aio.ServicerContext):
        outcome = await method(request_bytes, context.invocation_metadata(), context.time_remaining())
        if outcome.code is not grpc.StatusCode.OK:
            await context.abort(outcome.code, outcome.message)
        return outcome.payload

    return grpc.unary_unary_rpc_method_handler(call)  # raw bytes in and out


def _inference_handler(method: InferMethod, pipeline: Pipeline):
    """grpc.aio's side of one inference method: each call is a group of one in the pipeline."""

    async def call(request_bytes: bytes, context: aio.ServicerContext):
        try:
            inference = method.start(request_bytes, context.invocation_metadata(), context.time_remaining())
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
        answer = asyncio.get_running_loop().create_future()
        inference.reply, inference.reply_to = _settle, answer
        metrics.in_flight("GRPC").inc()
        pipeline.submit([inference])
        try:
            error, payload = await answer
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            pipeline.cancel(inference)
            raise
        if error is not None:
            await context.abort(error.code, error.message)
        return payload

    return grpc.unary_unary_rpc_method_handler(call)


def _stream_handler(method: StreamMethod, pipeline: Pipeline):
    """grpc.aio's side of a stream of inference requests: each message is a call of its own,
    submitted as it arrives; answers go back in the order of the requests. A request refused
    for its credentials ends the stream; any other error is a message on it."""

    async def stream(requests, context: aio.ServicerContext):
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue = asyncio.Queue()  # (answer future, its call or None), then None at the end

        async def read() -> None:
            async for request_bytes in requests:
                answer, inference = loop.create_future(), None
                try:
                    inference = method.start(request_bytes, context.invocation_metadata(), context.time_remaining())
                except ServingError as exc:
                    answer.set_result((exc, None))
                else:
                    inference.reply, inference.reply_to = _settle, answer
                    metrics.in_flight("GRPC").inc()
                    pipeline.submit([inference])
                answers.put_nowait((answer, inference))
            answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        unanswered: list = []
        try:
            while (item := await answers.get()) is not None:
                unanswered.append(item)
                error, payload = await item[0]
                unanswered.pop()
                if error is not None and error.code is grpc.StatusCode.UNAUTHENTICATED:
                    await context.abort(error.code, error.message)
                yield method.frame(payload, error)
            await reader  # its errors (a malformed stream) end the stream
        finally:  # the client went away, or the stream ended: stop what still runs
            reader.cancel()
            while not answers.empty():
                unanswered.append(answers.get_nowait())
            for item in unanswered:
                if item is not None and item[1] is not None and not item[0].done():
                    pipeline.cancel(item[1])

    return grpc.stream_stream_rpc_method_handler(stream)


def _message_stream_handler(method: MessageStream):
    """grpc.aio's side of a stream answered message by message, in order; an error ends it."""

    async def stream(requests, context: aio.ServicerContext):
        async for request_bytes in requests:
            outcome = await method(request_bytes, context.invocation_metadata(), context.time_remaining())
            if outcome.code is not grpc.StatusCode.OK:
                await context.abort(outcome.code, outcome.message)
            yield outcome.payload

    return grpc.stream_stream_rpc_method_handler(stream)


def _response_stream_handler(method: ResponseStream):
    """grpc.aio's side of a server stream: each response as the handler yields it."""

    async def stream(request_bytes: bytes, context: aio.ServicerContext):
        try:
            async for payload in method.responses(request_bytes, context.invocation_metadata(), context.time_remaining()):
                yield payload
        except ServingError as exc:
            await context.abort(exc.code, exc.message)

    return grpc.unary_stream_rpc_method_handler(stream)


def _settle(call, error, payload) -> None:
    if not call.reply_to.done():
        call.reply_to.set_result((error, payload))


def generic_handlers(
    methods: dict, pipeline: Pipeline, auth: TokenAuth | None = None, is_served: Callable[[str], bool] = lambda name: bool(name),
) -> list[grpc.GenericRpcHandler]:
    """Group "/service/method" entries into one generic handler per service (see method_table)."""
    services: dict[str, dict] = {}
    for path, method in method_table(methods, auth, is_served).items():
        service, name = path.strip("/").split("/")
        if isinstance(method, StreamMethod):
            handler = _stream_handler(method, pipeline)
        elif isinstance(method, MessageStream):
            handler = _message_stream_handler(method)
        elif isinstance(method, ResponseStream):
            handler = _response_stream_handler(method)
        elif isinstance(method, InferMethod):
            handler = _inference_handler(method, pipeline)
        else:
            handler = _unary_handler(method)
        services.setdefault(service, {})[name] = handler
    return [grpc.method_handlers_generic_handler(service, handlers) for service, handlers in services.items()]


class GrpcServer:
    """grpc.aio server on a dedicated thread and event loop."""

    def __init__(
        self, service: Services, addresses: list[str], *, max_receive_bytes: int = MAX_MESSAGE_BYTES,
        ssl: SSLConfig | None = None, auth: TokenAuth | None = None, max_connections: int = 0, max_concurrent_streams: int = 0,
    ):
        self._service = service
        self._addresses = addresses
        self._max_receive_bytes = max_receive_bytes
        self._max_connections = max_connections
        self._max_concurrent_streams = max_concurrent_streams
        self._ssl = ssl
        self._auth = auth
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.bound: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fastserve-grpc", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error:
            raise self._error

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start(), or logged after it
            if self._started.is_set():
                log.critical("the gRPC server (grpc.aio) cannot serve again", exc_info=exc)
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        addresses = self._addresses
        while True:
            self._server = self._build(addresses)
            await self._server.start()
            if not self._started.is_set():
                addresses = self.bound  # a restart binds the ports the first start got
                self._started.set()
            ended = asyncio.ensure_future(self._server.wait_for_termination())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():  # (ended is not cancelled: that would cancel grpc.aio's own shutdown)
                await self._stopped.wait()  # set by _stop, after the server has fully stopped
                await asyncio.gather(ended, return_exceptions=True)
                return
            stopping.cancel()
            # grpc.aio's accept loop ended by itself: it raises on a call whose method name is not
            # UTF-8 (it decodes the name before any handler runs) and then stops the whole server,
            # cancelling the calls in flight. Serve again on the same ports at once.
            cause = ended.exception() if not ended.cancelled() else None
            log.error("the gRPC server (grpc.aio) stopped by itself (%s: %s); starting it again on %s",
                      type(cause).__name__, cause, ", ".join(addresses))

    def _build(self, addresses: list[str]) -> aio.Server:
        """A grpc.aio server with the services, bound to addresses (self.bound: what it got)."""
        options = [
            ("grpc.max_receive_message_length", self._max_receive_bytes),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        if self._max_connections:  # gRPC closes connections beyond it as they arrive
            options.append(("grpc.max_allowed_incoming_connections", self._max_connections))
        if self._max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", self._max_concurrent_streams))
        server = aio.server(options=options)
        is_served = lambda name: self._service.registry.entry(name) is not None
        server.add_generic_rpc_handlers(
            generic_handlers(self._service.grpc_methods(), self._service.pipeline, self._auth, is_served))
        credentials = grpc_credentials(self._ssl) if self._ssl else None
        bound = []
        for address in addresses:
            if credentials is None or address.startswith("unix:"):  # a local socket needs no TLS
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
            if port == 0 and not address.startswith("unix:"):
                raise OSError(f"cannot listen for gRPC on {address}")
            bound.append(address if address.startswith("unix:") else address.rsplit(":", 1)[0] + f":{port}")
        self.bound = bound
        return server

    async def _stop(self, server: aio.Server, grace: float) -> None:
        self._stopping.set()
        try:
            await server.stop(grace)
        finally:
            self._stopped.set()

    def stop(self, grace: float) -> None:
        """Stop accepting calls, let accepted ones finish (up to grace seconds), then stop."""
        if self._loop is None or self._server is None or self._thread is None or not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(self._server, grace), self._loop).result()
        self._thread.join()
