"""Prometheus metrics: the one registry, every metric, and cheap ways to record them.

TF Serving's names are kept where it has them (prometheus_client adds `_total` to
every counter, so `:tensorflow:serving:request_count` is scraped as
`:tensorflow:serving:request_count_total`); their latencies are in microseconds, as
in TF Serving. fastserve's own metrics are `fastserve_*`, latencies in seconds.

The request path records through pre-bound series (one cached object per label
combination), so a request costs a dict lookup and a few lock-protected adds. Series are
kept compactly (metric_families.py): many models must not mean many objects to collect.
"""
import logging
import time

from grpc import StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from fastserve.batching import devices
from fastserve.metric_families import Counter, CountedSeries, Gauge, Histogram

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()

# TF Serving's request_latency buckets: 10 us * 1.8^i, i < 33.
_MICROSECOND_BUCKETS = tuple(10 * 1.8**i for i in range(33))
_SECOND_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# ---------------------------------------------------------------- TF Serving's names

REQUEST_COUNT = Counter(
    ":tensorflow:serving:request_count", "Requests by model and canonical status code.",
    ["model_name", "status"], registry=REGISTRY)
REQUEST_LATENCY = Histogram(
    ":tensorflow:serving:request_latency", "End-to-end request latency in microseconds, by API and entrypoint (GRPC, REST).",
    ["model_name", "API", "entrypoint"], buckets=_MICROSECOND_BUCKETS, registry=REGISTRY)
RUNTIME_LATENCY = Histogram(
    ":tensorflow:serving:runtime_latency", "Time running the model in microseconds.",
    ["model_name", "API", "runtime"], buckets=_MICROSECOND_BUCKETS, registry=REGISTRY)

# ---------------------------------------------------------------- fastserve's own

MODEL_REQUESTS = Counter(
    "fastserve_model_requests", "Requests that reached a model version, by signature, API and canonical status code.",
    ["model", "version", "signature", "api", "code"], registry=REGISTRY)
EXECUTION_SECONDS = Histogram(
    "fastserve_execution_seconds", "Time a signature call spends running in TensorFlow.",
    ["model", "version", "signature"], buckets=_SECOND_BUCKETS, registry=REGISTRY)
QUEUE_WAIT_SECONDS = Histogram(
    "fastserve_queue_wait_seconds", "Time a request waits for an executor thread.",
    ["model", "version", "signature"], buckets=_SECOND_BUCKETS, registry=REGISTRY)
IN_FLIGHT = Gauge(
    "fastserve_in_flight_requests", "Requests accepted and not yet answered, by protocol.",
    ["protocol"], registry=REGISTRY)
RESPONSE_CACHE = Counter(
    "fastserve_response_cache", "Response cache lookups (hit, miss) and entries evicted (eviction), per model.",
    ["model", "event"], registry=REGISTRY)
REJECTED = Counter(
    "fastserve_rejected_requests", "Requests refused before reaching a model, by reason.",
    ["reason"], registry=REGISTRY)
MODEL_STATE = Gauge(
    "fastserve_model_version_state", "1 for the state each model version is in now, 0 for the others.",
    ["model", "version", "state"], registry=REGISTRY)
LOAD_ATTEMPTS = Counter(
    "fastserve_model_load_attempts", "Model version load attempts by outcome (success, fail).",
    ["model", "status"], registry=REGISTRY)
LOAD_SECONDS = Histogram(
    "fastserve_model_load_seconds", "Time to load a model version (successful loads).",
    ["model"], buckets=_LOAD_BUCKETS, registry=REGISTRY)
WARMUP_SECONDS = Histogram(
    "fastserve_model_warmup_seconds", "Time replaying a model version's warm-up requests (part of its load).",
    ["model"], buckets=_LOAD_BUCKETS, registry=REGISTRY)
CHECK_SECONDS = Histogram(
    "fastserve_model_check_seconds", "Time running a new version's signatures once on synthetic requests (part of its load).",
    ["model"], buckets=_LOAD_BUCKETS, registry=REGISTRY)
MODEL_RUNTIME = Gauge(
    "fastserve_model_runtime", "1 for the runtime (session or function) each loaded model version runs on.",
    ["model", "version", "runtime"], registry=REGISTRY)

UNKNOWN_MODEL = ""  # the model label of requests for models that are not served


# ---------------------------------------------------------------- request path


class _RequestSeries:
    """Pre-bound children for one (entrypoint, API, model): no label lookups per request."""

    __slots__ = ("_model", "_latency", "_counts")

    def __init__(self, entrypoint: str, api: str, model: str):
        self._model = model
        self._latency = REQUEST_LATENCY.labels(model, api, entrypoint)
        self._counts: dict[StatusCode, CountedSeries] = {}

    def done(self, code: StatusCode, started: float) -> float:
        """Count one finished request that started at `started`; returns its duration in seconds."""
        seconds = self.observe(started)
        self.count(code)
        return seconds

    def observe(self, started: float) -> float:
        """The latency of one finished request (counted with `count`); returns it in seconds."""
        seconds = time.perf_counter() - started
        self._latency.observe(seconds * 1e6)
        return seconds

    def count(self, code: StatusCode, requests: int = 1) -> None:
        child = self._counts.get(code)
        if child is None:
            child = self._counts[code] = REQUEST_COUNT.labels(self._model, code.name)
        child.inc(requests)


_request_series: dict[tuple[str, str, str], _RequestSeries] = {}


def request_series(entrypoint: str, api: str, model: str) -> _RequestSeries:
    key = (entrypoint, api, model)
    series = _request_series.get(key)
    if series is None:
        series = _request_series[key] = _RequestSeries(entrypoint, api, model)
    return series


_in_flight: dict[str, CountedSeries] = {}


def in_flight(protocol: str):
    """The in-flight gauge of one protocol (GRPC, REST), bound once."""
    child = _in_flight.get(protocol)
    if child is None:
        child = _in_flight[protocol] = IN_FLIGHT.labels(protocol)
    return child


def rejected(reason: str, requests: int = 1) -> None:
    """Count requests refused by a limit or by authentication (rare: no pre-binding)."""
    REJECTED.labels(reason).inc(requests)


class _ModelSeries:
    """Pre-bound children for one (model, version, signature, API)."""

    __slots__ = ("_labels", "_counts", "_runtime")

    def __init__(self, model: str, version: int, signature: str, api: str):
        self._labels = (model, str(version), signature, api)
        self._counts: dict[StatusCode, CountedSeries] = {}
        self._runtime = RUNTIME_LATENCY.labels(model, api, "TF")

    def count(self, code: StatusCode, requests: int = 1) -> None:
        child = self._counts.get(code)
        if child is None:
            child = self._counts[code] = MODEL_REQUESTS.labels(*self._labels, code.name)
        child.inc(requests)

    def ran(self, seconds: float, requests: int = 1) -> None:
        """Time from handing the inputs to the executor until the outputs came back."""
        for _ in range(requests):
            self._runtime.observe(seconds * 1e6)


_model_series: dict[tuple[str, int, str, str], _ModelSeries] = {}


def model_series(model: str, version: int, signature: str, api: str) -> _ModelSeries:
    key = (model, version, signature, api)
    series = _model_series.get(key)
    if series is None:
        series = _model_series[key] = _ModelSeries(model, version, signature, api)
    return series


class _ExecutionSeries:
    """Pre-bound children for one (model, version, signature) queue of an executor."""

    __slots__ = ("queue_wait", "execution")

    def __init__(self, model: str, version: int, signature: str):
        self.queue_wait = QUEUE_WAIT_SECONDS.labels(model, str(version), signature)
        self.execution = EXECUTION_SECONDS.labels(model, str(version), signature)

    def ran(self, queued: float, started: float, finished: float) -> None:
        """One signature call: queued -> started is waiting, started -> finished is running."""
        self.queue_wait.observe(started - queued)
        self.execution.observe(finished - started)


_execution_series: dict[tuple[str, int, str], _ExecutionSeries] = {}


def execution_series(model: str, version: int, signature: str) -> _ExecutionSeries:
    key = (model, version, signature)
    series = _execution_series.get(key)
    if series is None:
        series = _execution_series[key] = _ExecutionSeries(model, version, signature)
    return series


class _NoSeries:
    """Stands in for every request-path series when per-request metrics are off."""

    __slots__ = ()

    def done(self, code: StatusCode, started: float) -> float:
        return time.perf_counter() - started

    def observe(self, started: float) -> float:
        return time.perf_counter() - started

    def count(self, code: StatusCode, requests: int = 1) -> None:
        pass

    def ran(self, *times: float) -> None:
        pass


def disable_request_metrics() -> None:
    """Stop recording per-request metrics (--enable_metrics=false; bench/ measures their cost)."""
    global request_series, model_series, execution_series
    none = _NoSeries()
    request_series = model_series = execution_series = lambda *labels: none  # type: ignore[assignment]  # stands in for each


# ---------------------------------------------------------------- batching

_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
BATCH_INPUT_SIZE = Histogram(
    ":tensorflow:serving:batching:input_batch_size", "Rows in the requests that formed a batch, per batch.",
    ["model_name", "op_name"], buckets=_BATCH_SIZE_BUCKETS, registry=REGISTRY)
BATCH_PROCESSED_SIZE = Histogram(
    ":tensorflow:serving:batching:processed_batch_size", "Rows the model ran per batch, padding included.",
    ["model_name", "op_name"], buckets=_BATCH_SIZE_BUCKETS, registry=REGISTRY)
BATCH_PADDING_SIZE = Histogram(
    ":tensorflow:serving:batching:padding_size", "Padding rows added per batch.",
    ["model_name", "op_name"], buckets=(0,) + _BATCH_SIZE_BUCKETS, registry=REGISTRY)
BATCH_QUEUING_LATENCY = Histogram(
    ":tensorflow:serving:batching:queuing_latency", "Time a request waits in its batch queue, in microseconds.",
    ["model_name", "op_name"], buckets=_MICROSECOND_BUCKETS, registry=REGISTRY)

BATCHES = Counter(
    "fastserve_batches", "Batches run, by why they closed: full, timeout (batch_timeout_micros), target (waiting "
    "longer would miss target_latency_ms), idle (no arrival worth waiting for).",
    ["model", "version", "signature", "closed"], registry=REGISTRY)


class _BatchSeries:
    """Pre-bound children for one batch queue (model, version, signature)."""

    __slots__ = ("input_size", "processed_size", "padding", "queuing", "execution", "closed", "labels")

    def __init__(self, model: str, version: int, signature: str):
        self.labels = (model, str(version), signature)
        self.closed: dict[str, CountedSeries] = {}  # why -> its counter
        self.input_size = BATCH_INPUT_SIZE.labels(model, signature)
        self.processed_size = BATCH_PROCESSED_SIZE.labels(model, signature)
        self.padding = BATCH_PADDING_SIZE.labels(model, signature)
        self.queuing = BATCH_QUEUING_LATENCY.labels(model, signature)
        self.execution = execution_series(model, version, signature)


class _BatchQueueCollector:
    """Tasks and rows waiting in each batch queue, read at scrape time."""

    def __init__(self, stats):
        self._stats = stats

    def collect(self):
        tasks = GaugeMetricFamily("fastserve_batch_queue_tasks", "Requests waiting in a batch queue.", labels=["model", "version", "signature"])
        rows = GaugeMetricFamily("fastserve_batch_queue_rows", "Rows waiting in a batch queue.", labels=["model", "version", "signature"])
        for (model, version, signature), (waiting_tasks, waiting_rows) in self._stats.queue_lengths().items():
            tasks.add_metric([model, str(version), signature], waiting_tasks)
            rows.add_metric([model, str(version), signature], waiting_rows)
        yield from (tasks, rows)

    def describe(self):
        return []


def export_batching(stats) -> None:
    """Export a batching.stats.BatchStats: every batch as it runs, queue lengths at scrape time."""
    series: dict[tuple[str, int, str], _BatchSeries] = {}

    def observe(record) -> None:  # on the batch thread: pre-bound, no allocation beyond the first batch
        one = series.get(record.queue)
        if one is None:
            one = series[record.queue] = _BatchSeries(*record.queue)
        one.input_size.observe(record.rows)
        one.processed_size.observe(record.padded_rows)
        one.padding.observe(record.padded_rows - record.rows)
        for wait in record.queue_wait_seconds:
            one.queuing.observe(wait * 1e6)
            one.execution.queue_wait.observe(wait)
        one.execution.execution.observe(record.execution_seconds)
        closed = one.closed.get(record.closed)
        if closed is None:
            closed = one.closed[record.closed] = BATCHES.labels(*one.labels, record.closed)
        closed.inc()

    stats.add_observer(observe)
    REGISTRY.register(_BatchQueueCollector(stats))


# ---------------------------------------------------------------- control plane


def model_state(model: str, version: int, state: str, states: tuple[str, ...], loaded_in: float | None,
                load_failed: bool) -> None:
    """Record one version state transition (called by the state monitor, which owns the state
    names): the version is in `state`, not in the other `states`; loaded_in: the seconds a load
    that just succeeded took."""
    for name in states:
        MODEL_STATE.labels(model, str(version), name).set(1 if name == state else 0)
    if loaded_in is not None:
        LOAD_ATTEMPTS.labels(model, "success").inc()
        LOAD_SECONDS.labels(model).observe(loaded_in)
    elif load_failed:
        LOAD_ATTEMPTS.labels(model, "fail").inc()


def model_runtime(model: str, version: int, runtime: str, loaded: bool) -> None:
    """The runtime a version serves on: a series while it is loaded, none after."""
    if loaded:
        MODEL_RUNTIME.labels(model, str(version), runtime).set(1)
    else:
        MODEL_RUNTIME.remove(model, str(version), runtime)


# ---------------------------------------------------------------- many models under a memory budget

MODEL_MEMORY = Gauge(
    "fastserve_model_memory_bytes", "Memory a loaded model version took when it loaded, by device (host, GPU:N).",
    ["model", "version", "device"], registry=REGISTRY)
MEMORY_BUDGET = Gauge("fastserve_memory_budget_bytes", "server.model_memory_budget_mb in bytes (0: no budget).", [],
                      registry=REGISTRY).labels()
MEMORY_IN_USE = Gauge("fastserve_memory_budget_in_use_bytes", "Host memory the loaded model versions took, together.", [],
                      registry=REGISTRY).labels()
ON_DEMAND_LOADS = Counter(
    "fastserve_on_demand_loads", "Loads of on-demand models started by a request, by result (ok, failed, no_room).",
    ["model", "result"], registry=REGISTRY)
ON_DEMAND_HITS = Counter(
    "fastserve_on_demand_hits", "Request groups for an on-demand model that found it loaded.", ["model"], registry=REGISTRY)
EVICTIONS = Counter(
    "fastserve_evictions", "On-demand model versions unloaded to make room within the memory budget.", ["model"],
    registry=REGISTRY)
COLD_START_SECONDS = Histogram(
    "fastserve_cold_start_seconds", "How long requests waited for their on-demand model to load.", ["model"],
    buckets=_SECOND_BUCKETS, registry=REGISTRY)


def on_demand_hit(model: str) -> None:
    ON_DEMAND_HITS.labels(model).inc()


def cold_start(model: str, seconds: float) -> None:
    COLD_START_SECONDS.labels(model).observe(seconds)


def model_memory(model: str, version: int, host: int | None, gpus: dict[int, int]) -> None:
    """A version's footprint while it is loaded (host None: it unloaded)."""
    for device, value in (("host", host), *((f"GPU:{i}", None if host is None else b) for i, b in gpus.items())):
        if value is None:
            MODEL_MEMORY.remove(model, str(version), device)
        else:
            MODEL_MEMORY.labels(model, str(version), device).set(value)


# ---------------------------------------------------------------- GPUs (Triton's nv_gpu_* set)


class _GpuCollector:
    """Per-GPU utilization and memory from NVML, read at scrape time; nothing without GPUs."""

    def collect(self):
        opened = devices.nvml()
        if opened is None:
            return
        nvml, handles = opened
        util = GaugeMetricFamily("nv_gpu_utilization", "GPU utilization rate (0.0 - 1.0)", labels=["gpu_uuid"])
        used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=["gpu_uuid"])
        total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=["gpu_uuid"])
        for index, handle in enumerate(handles):
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as exc:
                log.warning("cannot read GPU %d: %s", index, exc)
                continue
            util.add_metric([uuid], rates.gpu / 100.0)
            used.add_metric([uuid], memory.used)
            total.add_metric([uuid], memory.total)
        yield from (util, used, total)

    def describe(self):
        return []  # collected lazily: registering must not touch NVML twice


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


REGISTRY.register(_GpuCollector())


def scrape() -> tuple[bytes, str]:
    """The exposition body and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
