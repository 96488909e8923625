"""Wires the parts together: load models, start the frontends, shut down gracefully."""
import asyncio
import gc
import logging
import signal
import threading

import uvloop
from grpc import StatusCode

from fastserve import custom_ops, metrics, statistics, tls, tracing
from fastserve.auth import TokenAuth
from fastserve.batching.executor import Executor
from fastserve.batching.scheduler import Scheduler
from fastserve.config import BatchingConfig, ConfigError, ModelConfig, ServerConfig, check_model_root, read_model_list
from fastserve.errors import ServingError
from fastserve.pipeline.cache import ResponseCaches
from fastserve.pipeline.pipeline import Pipeline
from fastserve.servables.manager import ModelManager
from fastserve.servables import version_loader
from fastserve.servables.registry import Registry
from fastserve.servables.state import StateMonitor
from fastserve.services.catalog import Services
from fastserve.services.example_inference import ExampleInference
from fastserve.services.health import WATCH_PERIOD, Health
from fastserve.services.repository import ModelRepository
from fastserve.services.tf_serving import TFServingService
from fastserve.services.tf_serving_rest import RestV1
from fastserve.services.v2 import V2Service
from fastserve.services.v2_rest import V2Rest
from fastserve.transports import descriptors
from fastserve.transports.grpc_aio import GrpcServer
from fastserve.transports.grpc_native import NativeGrpcServer, chosen_transport
from fastserve.transports.http import HttpLimits, HttpServer
from fastserve.transports.rest import RestApp, error_response

log = logging.getLogger("fastserve")


class Server:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.registry = Registry()
        self.monitor = StateMonitor()
        self.manager = ModelManager(config, self.registry, self.monitor, version_loader.loader(config))
        self.scheduler = Scheduler(config, Executor(config.executor_threads))
        if config.enable_metrics:
            metrics.export_batching(self.scheduler.stats)
        else:
            metrics.disable_request_metrics()
        self.scheduler.stats.add_observer(statistics.batch_ran)
        self.manager.unload_listeners.append(self.scheduler.release_version)
        self.caches = ResponseCaches()
        self.caches.configure(config.models)
        self.manager.unload_listeners.append(self.caches.release_version)
        self.pipeline = Pipeline(self.registry, self.scheduler, config.max_tensor_elements, self.caches,
                                 self.manager.load_on_demand, config.on_demand_load_timeout_ms / 1000)
        examples = ExampleInference(self.registry, self.pipeline)
        self.service = TFServingService(self.registry, self.monitor, examples, self.reload_models)
        self.health = Health(self.registry, self.manager.all_available, models_private=bool(config.auth_token))
        self.repository = ModelRepository(lambda: self.manager.models, self.monitor, self.reload_models, tuple(config.models))
        self.v2 = V2Service(self.registry, self.health, self.repository, self._model_settings)
        self.grpc_services = Services(self.registry, self.pipeline, self.service, self.v2, self.health)
        self._reload_lock = threading.Lock()  # one reload at a time, whoever asks
        self.auth = TokenAuth(config.auth_token, config.admin_token)
        self._grpc: GrpcServer | NativeGrpcServer | None = None
        self._stopping_event = threading.Event()
        self._http: HttpServer | None = None

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        rest_connections, grpc_connections = descriptors.connection_caps(
            self.config.rest_max_connections, self.config.grpc_max_connections, descriptors.raise_limit())
        custom_ops.register(self.config)
        if self.config.tracing_endpoint:
            tracing.setup(self.config.tracing_endpoint, self.config.tracing_sample_rate)
        version_loader.start_runtimes(self.config)
        # What the imports made (TensorFlow's ~300k objects) lives as long as the process: frozen,
        # a full collection (after an unload, or Python's own) scans only what came since, ~1 ms
        # instead of ~170 ms holding the GIL while every request waits.
        gc.freeze()
        self.manager.start()
        self._log_models()
        addresses = [f"{self.config.host}:{self.config.grpc_port}"]
        if self.config.grpc_socket_path:
            addresses.append(f"unix:{self.config.grpc_socket_path}")
        transport = chosen_transport(self.config.grpc_transport)
        log.info("gRPC transport: %s", "native (libgrpc++)" if transport == "native" else "grpc.aio")
        server_class = NativeGrpcServer if transport == "native" else GrpcServer
        self._grpc = grpc_server = server_class(
            self.grpc_services, addresses, max_receive_bytes=self.config.grpc_max_receive_bytes,
            ssl=self.config.ssl_config, auth=self.auth, max_connections=grpc_connections,
            max_concurrent_streams=self.config.grpc_max_concurrent_streams,
        )
        grpc_server.start()
        for address in grpc_server.bound:
            log.info("Running gRPC ModelServer at %s", address)
        return uvloop.run(self._serve(rest_connections))

    async def _serve(self, rest_connections: int) -> int:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, self.reload_from_file, "SIGHUP"))
        loop.add_signal_handler(signal.SIGUSR1, self.scheduler.log_stats)
        if self.config.model_config_file_poll_wait_seconds > 0 and self.config.model_config_format:
            poller = threading.Thread(target=self._poll_config_file, name="fastserve-config-poll", daemon=True)
            poller.start()
        if self.config.rest_port:
            rest = RestApp(self.pipeline, self.registry, RestV1(self.service), V2Rest(self.v2), timeout_ms=self.config.rest_api_timeout_ms,
                           auth=self.auth, metrics_path=self.config.metrics_path)
            limits = HttpLimits(
                max_body_bytes=self.config.max_request_bytes, max_connections=rest_connections,
                max_header_bytes=self.config.rest_max_header_bytes, max_url_bytes=self.config.rest_max_url_bytes,
                max_pipelined=self.config.rest_max_pipelined_requests, header_timeout=self.config.rest_header_timeout_seconds,
                idle_timeout=self.config.rest_idle_timeout_seconds,
            )
            self._http = HttpServer(rest, error_response, limits)
            ssl_context = tls.server_context(self.config.ssl_config) if self.config.ssl_config else None
            port = await self._http.start(self.config.host, self.config.rest_port, ssl_context)
            log.info("Exporting HTTP%s/REST API at %s:%d", "S" if ssl_context else "", self.config.host, port)
        log.info("fastserve ready")
        await stopping.wait()
        await self._shutdown()
        return 0

    def _model_settings(self, name: str) -> tuple[ModelConfig, BatchingConfig | None] | None:
        model = next((m for m in self.manager.models if m.name == name), None)
        return None if model is None else (model, self.config.batching_for(model))

    # ------------------------------------------------------------ runtime reload

    def reload_models(self, models: tuple[ModelConfig, ...], unload_all: bool = False) -> None:
        """Apply a new model list (blocking). Errors are raised to the caller and logged.
        unload_all: an empty list may unload every model (an explicit unload of the last one)."""
        with self._reload_lock:
            try:
                try:
                    check_model_root(models, self.config.model_root)
                except ConfigError as exc:
                    raise ServingError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
                self.manager.reload(models, unload_all)
                self.scheduler.configure(models)
                self.caches.configure(models)
            except ServingError as exc:
                log.error("model config reload rejected, the previous config keeps serving: %s", exc.message)
                raise

    def reload_from_file(self, reason: str) -> bool:
        """Re-read the config file the server started with; True if it was applied."""
        try:
            models = read_model_list(self.config)
        except ConfigError as exc:
            log.error("%s: cannot reload the model config, the previous config keeps serving: %s", reason, exc)
            return False
        if {m.name: m for m in models} == {m.name: m for m in self.manager.models}:
            return False
        log.info("%s: reloading the model config from %s", reason, self.config.model_config_file)
        try:
            self.reload_models(models)
        except ServingError:
            return False
        return True

    def _poll_config_file(self) -> None:
        stop = self._stopping_event
        while not stop.wait(self.config.model_config_file_poll_wait_seconds):
            self.reload_from_file("config file changed")

    async def _shutdown(self) -> None:
        grace = self.config.shutdown_grace_seconds
        log.info("shutting down: no new requests; waiting up to %gs for in-flight ones", grace)
        self._stopping_event.set()
        self.health.draining = True  # readiness answers "not ready" from here on
        for _ in range(int(2 * WATCH_PERIOD / 0.05)):  # Watch streams say NOT_SERVING before the transports stop
            if not self.health.watching:
                break
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        if self._http:
            self._http.stop_accepting()
        assert self._grpc is not None  # started before anything is served
        grpc_stopped = loop.run_in_executor(None, self._grpc.stop, grace)
        if self._http and not await self._http.drain(grace):
            log.warning("REST requests still in flight after %gs", grace)
        await grpc_stopped
        await loop.run_in_executor(None, self.manager.stop, grace)
        self.scheduler.shutdown()
        tracing.shutdown()
        log.info("fastserve stopped")

    def _log_models(self) -> None:
        for model in self.config.models:
            name = model.name
            states = self.monitor.versions(name)
            entry = self.registry.entry(name)
            if self.config.on_demand(model):
                log.info("model %s loads on its first request (versions %s on disk)", name, sorted(states))
            elif entry and entry.versions:
                log.info("serving model %s versions %s from %s", name, sorted(entry.versions), _base_path(self.config, name))
            else:
                errors = "; ".join(f"version {v}: {s.message}" for v, s in sorted(states.items()) if s.message)
                log.error("model %s has no available version yet%s", name, f" ({errors})" if errors else "")


def _base_path(config: ServerConfig, name: str) -> str:
    return next(m.base_path for m in config.models if m.name == name)
