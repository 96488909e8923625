"""OpenTelemetry tracing: the caller's W3C trace context in, spans out over OTLP.

Off unless `server.tracing.endpoint` is set; then `setup` makes the tracer and every
request may carry a span (`call.trace`, sampled at `sample_rate` unless the caller's
`traceparent` decides): the request's span from its arrival to its answer, a child span for
its wait in the queue, and one span per batch, linked to the spans of the requests it ran,
with the model, version and batch size. When off, each step costs one `is None` test.

Times come from the monotonic clocks the pipeline already reads (perf_counter for
arrivals, monotonic for the queue), shifted to the wall clock once at setup.
"""
import logging
import time
from typing import Any

from fastserve.config import ConfigError

log = logging.getLogger(__name__)

# OpenTelemetry's objects once set up (the package is optional: fastserve[tracing])
_tracer: Any = None
_propagator: Any = None
_provider: Any = None
_PERF_TO_EPOCH_NS = 0
_MONOTONIC_TO_EPOCH_NS = 0


def setup(endpoint: str, sample_rate: float) -> None:
    """Export spans to the OTLP gRPC receiver at `endpoint` (host:port, or http[s]://host:port)."""
    global _tracer, _propagator, _provider, _PERF_TO_EPOCH_NS, _MONOTONIC_TO_EPOCH_NS
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(f"server.tracing needs OpenTelemetry's OTLP exporter: pip install 'fastserve[tracing]' ({exc})") from None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from fastserve import __version__

    insecure = not endpoint.startswith("https://")
    _provider = TracerProvider(resource=Resource.create({"service.name": "fastserve", "service.version": __version__}),
                               sampler=ParentBased(TraceIdRatioBased(sample_rate)))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    _tracer = _provider.get_tracer("fastserve")
    _propagator = TraceContextTextMapPropagator()
    now = time.time_ns()
    _PERF_TO_EPOCH_NS = now - time.perf_counter_ns()
    _MONOTONIC_TO_EPOCH_NS = now - time.monotonic_ns()
    log.info("tracing: spans to %s, sampling %g of requests without a sampled parent", endpoint, sample_rate)


def shutdown() -> None:
    """Send the spans still buffered."""
    if _provider is not None:
        _provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def start_request(call, carrier) -> None:
    """Give `call` its request span (when sampled), under the trace context its caller sent:
    `carrier` is a mapping of lower-case HTTP headers, or gRPC metadata (key, value) pairs."""
    if not isinstance(carrier, dict):
        carrier = {key: value for key, value in carrier or () if isinstance(value, str)}
    from opentelemetry.trace import SpanKind

    span = _tracer.start_span(
        call.api, context=_propagator.extract(carrier), kind=SpanKind.SERVER, start_time=perf_ns(call.started),
        attributes={"fastserve.model": call.model, "fastserve.protocol": call.entrypoint},
    )
    call.trace = span if span.is_recording() else None


def end_request(call, code_name: str, version: int | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    span, call.trace = call.trace, None
    if version is not None:
        span.set_attribute("fastserve.version", version)
    span.set_attribute("rpc.grpc.status_code", code_name)
    if code_name != "OK":
        span.set_status(Status(StatusCode.ERROR, code_name))
    span.end()


def batch_ran(model: str, version: int, rows: int, padded: int, waits: list[tuple[Any, int]], started: int, finished: int,
              closed: str = "") -> None:
    """One batch that ran traced requests, `waits`: [(request span, when it was queued)]: a
    queue span for each (queued..started) and the batch's span (started..finished), a child of
    the first one's and linked to all of them. Times in wall-clock ns (`perf_ns`, `monotonic_ns`)."""
    from opentelemetry.trace import Link, set_span_in_context

    for span, queued in waits:
        _tracer.start_span("queue", context=set_span_in_context(span), start_time=queued).end(end_time=started)
    attributes: dict[str, str | int] = {"fastserve.model": model, "fastserve.version": version, "fastserve.batch_size": rows,
                  "fastserve.padded_batch_size": padded}
    if closed:
        attributes["fastserve.batch_closed"] = closed
    batch = _tracer.start_span("batch", context=set_span_in_context(waits[0][0]), links=[Link(span.get_span_context()) for span, _ in waits],
                               start_time=started, attributes=attributes)
    batch.end(end_time=finished)


def perf_ns(seconds: float) -> int:
    """A time.perf_counter() reading as wall-clock ns."""
    return int(seconds * 1e9) + _PERF_TO_EPOCH_NS


def monotonic_ns(seconds: float) -> int:
    """A time.monotonic() reading as wall-clock ns."""
    return int(seconds * 1e9) + _MONOTONIC_TO_EPOCH_NS
