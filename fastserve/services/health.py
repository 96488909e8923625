"""Liveness and readiness, one answer for every protocol.

Ready means: every configured model has an AVAILABLE version and the server is not
draining (shutting down). The standard grpc.health.v1.Health Check method reports it
for the whole server (service "") and for each served gRPC service; a model name as
the service asks about that one model, unless token authentication is on: Check is open
to every caller (probes carry no token), so it must not tell them which models exist.
Served through the method-table mechanism, so every gRPC transport serves it.
"""
import asyncio
from collections.abc import AsyncIterator, Callable

from grpc_health.v1 import health_pb2

from fastserve.errors import not_found
from fastserve.services.methods import ServerStream
from fastserve.servables.registry import Registry

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
WATCH_PERIOD = 0.5  # seconds between Watch's looks at the status (readiness changes with loads and drains)

SERVED_SERVICES = (
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
    "inference.GRPCInferenceService",
    "grpc.health.v1.Health",
)


class Health:
    def __init__(self, registry: Registry, all_available: Callable[[], bool], models_private: bool = False):
        self._registry = registry
        self._all_available = all_available
        self._models_private = models_private  # token auth is on: Check does not answer for models
        self.draining = False  # set once shutdown begins
        self.watching = 0  # Watch streams open (each ends once it has told its client of the shutdown)

    def live(self) -> bool:
        return True  # answering at all is being alive

    def ready(self) -> bool:
        return not self.draining and self._all_available()

    def model_ready(self, name: str, version: int | None = None) -> bool:
        entry = self._registry.entry(name)
        if self.draining or entry is None or not entry.versions:
            return False
        return version is None or version in entry.versions

    def grpc_methods(self) -> dict:
        return {
            "/grpc.health.v1.Health/Check": (health_pb2.HealthCheckRequest, self.check),
            "/grpc.health.v1.Health/Watch": ServerStream(health_pb2.HealthCheckRequest, self.watch),
        }

    def check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service)
        if status == _SERVICE_UNKNOWN:
            if self._models_private:
                raise not_found(f"unknown service: {request.service} (with token authentication on, ask for a model's "
                                "readiness with GetModelStatus or ModelReady)")
            raise not_found(f"unknown service or model: {request.service}")
        return health_pb2.HealthCheckResponse(status=status)

    async def watch(self, request: health_pb2.HealthCheckRequest) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change, until the client goes away (an unknown service is
        SERVICE_UNKNOWN, and may become known, as the health protocol says), or until the server
        shuts down: the stream ends once it has said NOT_SERVING, so that it does not hold the
        shutdown as an in-flight call."""
        last = None
        self.watching += 1
        try:
            while True:
                status = self._status(request.service)
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                if self.draining:
                    return
                await asyncio.sleep(WATCH_PERIOD)
        finally:
            self.watching -= 1

    def _status(self, service: str) -> int:
        if service == "" or service in SERVED_SERVICES:
            return _SERVING if self.ready() else _NOT_SERVING
        if self._models_private or self._registry.entry(service) is None:
            return _SERVICE_UNKNOWN
        return _SERVING if self.model_ready(service) else _NOT_SERVING
