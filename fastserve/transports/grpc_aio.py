"""gRPC transport on grpc.aio: drives the services' method tables over raw bytes.

It runs its own asyncio loop on its own thread, beside the REST frontend's uvloop.
"""
import asyncio
import logging
import threading
from typing import Callable

import grpc
from grpc import aio
from grpc_reflection.v1alpha import reflection

from fastserve import metrics
from fastserve.auth import TokenAuth
from fastserve.errors import ServingError
from fastserve.pipeline.pipeline import Pipeline
from fastserve.services.catalog import Services
from fastserve.transports.grpc_calls import MAX_MESSAGE_BYTES, InferMethod, Method, method_table
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
        handler = _inference_handler(method, pipeline) if isinstance(method, InferMethod) else _unary_handler(method)
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
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        options = [
            ("grpc.max_receive_message_length", self._max_receive_bytes),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        if self._max_connections:  # gRPC closes connections beyond it as they arrive
            options.append(("grpc.max_allowed_incoming_connections", self._max_connections))
        if self._max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", self._max_concurrent_streams))
        self._server = aio.server(options=options)
        is_served = lambda name: self._service.registry.entry(name) is not None  # noqa: E731
        self._server.add_generic_rpc_handlers(
            generic_handlers(self._service.grpc_methods(), self._service.pipeline, self._auth, is_served))
        reflection.enable_server_reflection(  # lets grpcurl-style tools list and describe the services
            [*self._service.service_names(), reflection.SERVICE_NAME], self._server, pool=self._service.reflection_pool()
        )
        credentials = grpc_credentials(self._ssl) if self._ssl else None
        for address in self._addresses:
            if credentials is None or address.startswith("unix:"):  # a local socket needs no TLS
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(address, credentials)
            if port == 0 and not address.startswith("unix:"):
                raise OSError(f"cannot listen for gRPC on {address}")
            self.bound.append(address if address.startswith("unix:") else address.rsplit(":", 1)[0] + f":{port}")
        self._stopped = asyncio.Event()
        await self._server.start()
        self._started.set()
        await self._stopped.wait()  # set by _stop, after the server has fully stopped

    async def _stop(self, grace: float) -> None:
        try:
            await self._server.stop(grace)
        finally:
            self._stopped.set()

    def stop(self, grace: float) -> None:
        """Stop accepting calls, let accepted ones finish (up to grace seconds), then stop."""
        if self._loop is None or self._server is None or not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop).result()
        self._thread.join()
