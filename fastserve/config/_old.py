"""Server configuration: typed objects, parsed once, from models.yaml or TF Serving's files.

Everything else reads ServerConfig / ModelConfig; nothing re-reads the files.

models.yaml schema (every key optional except models[].name and models[].base_path):

    server:
      host: 0.0.0.0                      # address both frontends bind
      grpc_port: 8500
      rest_port: 8501                    # 0 disables REST
      grpc_socket_path: ""               # also serve gRPC on this unix socket
      rest_api_timeout_ms: 30000         # REST request deadline; 0 = none
      file_system_poll_wait_seconds: 1   # version polling; 0 = once at start, < 0 = never
      max_num_load_retries: 5
      load_retry_interval_seconds: 60
      num_load_threads: 4
      executor_threads: 4                # threads that run models
      saved_model_tags: [serve]
      tensorflow_intra_op_parallelism: 0 # 0 = TensorFlow decides
      tensorflow_inter_op_parallelism: 0
      allow_version_labels_for_unavailable_models: false
      allow_empty_model_config: false    # a reload may list no models and unload them all (else refused)
      shutdown_grace_seconds: 30         # SIGTERM: how long in-flight requests may take
      max_request_bytes: 67108864        # REST body limit (413 above it)
      rest_max_connections: 0            # REST connections open at once, more are answered 503 and closed;
                                         #   0 = half the process's file descriptor limit
      rest_max_header_bytes: 65536       # REST request line and headers together (431 above it)
      rest_max_url_bytes: 8192           # REST request URL (414 above it)
      rest_max_pipelined_requests: 100   # REST requests of one connection in flight; beyond them, and while
                                         #   its client does not read its answers, the connection is not read
      rest_header_timeout_seconds: 10    # a REST request line and headers must arrive within this (else 408); 0 = no limit
      rest_idle_timeout_seconds: 75      # a REST connection waiting this long for its next request is closed; 0 = never
      grpc_max_connections: 0            # gRPC connections open at once, more are closed as they arrive;
                                         #   0 = a quarter of the process's file descriptor limit
      grpc_max_concurrent_streams: 0     # gRPC calls in flight on one connection (HTTP/2 MAX_CONCURRENT_STREAMS);
                                         #   0 = gRPC's default, no limit (calls a client starts beyond it fail UNAVAILABLE)
      grpc_transport: ""                 # native (libgrpc++) or aio (grpc.aio); "" = native where built
      grpc_max_receive_bytes: 2147483647 # gRPC message limit (RESOURCE_EXHAUSTED above it)
      max_tensor_elements: 0             # elements in one request's input tensors together; 0 = no limit
      ssl_config_file: ""                # TF Serving's SSLConfig text proto: TLS (and mTLS) for gRPC and REST
      auth_token_file: ""                # file holding the bearer token every request must send
      admin_token_file: ""               # file holding the token the admin surface needs (reloads,
                                         #   V2 repository load/unload); default: the auth token
      enable_metrics: true               # per-request Prometheus metrics (false: state metrics only)
      metrics_path: /monitoring/prometheus/metrics  # Prometheus scrape path on the REST port (and /metrics)
      model_root: ""                     # if set, model paths must resolve inside it (no escape by
                                         #   symlinks or ..), also in reloads and version directories
      enable_model_warmup: true          # replay assets.extra/tf_serving_warmup_requests
      num_request_iterations_for_warmup: 1
      model_config_file_poll_wait_seconds: 0  # re-read this file (or --model_config_file); 0 = never
      enable_batching: false             # batch every model (TF Serving's --enable_batching)
      batching_parameters: {}            # the batching section every model gets when enable_batching is set
      cpu_devices: 1                     # split the CPU into this many TensorFlow devices (CPU:0..N-1)
      check_before_available: true       # run every signature once before a version serves (warm-up
                                         #   records, else a synthetic request); false skips the synthetic runs
      custom_op_libraries: []            # TensorFlow op libraries (.so) loaded before any model (tf.load_op_library)
      import_modules: []                 # Python modules imported before any model (tensorflow_text registers its ops)
      model_cache_dir: ""                # local copies of versions served from object storage (s3://, gs://, any
                                         #   fsspec URL as base_path); "" = a temporary directory of this process
      tracing:                           # OpenTelemetry spans (request, queue wait, batch) over OTLP gRPC; off without endpoint
        endpoint: ""                     #   the OTLP receiver, host:port (https://host:port for TLS)
        sample_rate: 1.0                 #   of requests whose caller's traceparent does not decide
      load: eager                        # eager: every model loads at start (TF Serving's way); on_demand: a
                                         #   model loads on its first request (each model may say otherwise)
      model_memory_budget_mb: 0          # host memory for loaded versions; a load past it first unloads the
                                         #   least recently used idle on-demand versions; 0 = no budget
      gpu_memory_budget_mb: 0            # the same, per GPU; 0 = no budget
      on_demand_load_timeout_ms: 60000   # the longest a request waits for its model to load (or its deadline)
    models:
      - name: half_plus_two
        base_path: models/half_plus_two  # relative paths are relative to this file; or a URL:
                                         #   s3://bucket/prefix, gs://..., any fsspec URL
        version_policy: {latest: 1}      # or: all, or {specific: [1, 2]}
        version_labels: {stable: 1}
        runtime: auto                    # auto (default): session if every signature runs on it, else
                                         #   function; or session, or function
        load_policy: availability_preserving  # or resource_preserving: unload the old version first
        load: eager                      # or on_demand (default: server.load)
        check_before_available: true     # this model's own server.check_before_available
        devices: []                      # run this model's batches on these devices (CPU:N, GPU:N): one
                                         #   instance and group of batch threads per device; needs batching
        instances_per_device: 1          # batch threads per device (like Triton's instance groups)
        response_cache:                  # answer a request seen before from memory (default: no cache)
          max_entries: 1024              #   least recently used entries go beyond these
          max_bytes: 67108864
        batching:                        # dynamic batching for this model (TF Serving's BatchingParameters)
          max_batch_size: 1000           # rows per batch; also the largest request accepted
          batch_timeout_micros: 0        # a batch closes when full or when its oldest request waited this long
          max_enqueued_batches: 10       # queue bound (x max_batch_size rows); beyond: UNAVAILABLE
          num_batch_threads: 2           # threads running this model's batches (default: CPU count)
          allowed_batch_sizes: []        # pad each batch up to the next of these (last = max batch size)
          pad_variable_length_inputs: false  # batch inputs whose non-batch dims differ, zero-padded
          enable_large_batch_splitting: false  # split requests across batches of max_execution_batch_size
          max_execution_batch_size: 0    # 0 = max_batch_size
          # fastserve's own: latency-aware scheduling and queue policies
          target_latency_ms: 0           # close a batch when waiting longer would put its oldest request past
                                         #   this (given the measured run time per batch size), or when no
                                         #   arrival is expected soon; batch_timeout_micros (default: the
                                         #   target) stays the longest wait; 0 = off (TF Serving's behaviour)
          priority_levels: 1             # request priorities 1 (highest) .. N: higher levels fill batches first
          default_priority_level: 0      # the level of a request that names none (0 = the lowest)
          max_queue_delay_ms: 0          # a request that waited longer is answered UNAVAILABLE, never run
          max_queue_size: 0              # rows waiting at one level; more are refused at once (429 /
                                         #   RESOURCE_EXHAUSTED); 0 = only max_enqueued_batches bounds it
          priority_queue_policy: {}      # per level: {1: {max_queue_delay_ms: 5, max_queue_size: 64}}
          max_concurrent_batches: 0      # batches of this model running at once (0 = one per batch thread)
"""
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from google.protobuf import text_format

from fastserve.servables.saved_model import AUTO, RUNTIMES
from fastserve.text_proto import message_classes
from fastserve.tls import SSLConfig, SSLConfigError, load_ssl_config_file


MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's largest: no practical limit unless configured, as TF Serving
METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's Prometheus path; /metrics is served too


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available) -> set[int]:
        """The aspired versions among those present on disk."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(self.versions) & set(available)
        return set(sorted(available)[-self.num_versions :]) if available else set()


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    version_policy: VersionPolicy = VersionPolicy()
    version_labels: dict = field(default_factory=dict)
    runtime: str = AUTO
    load_policy: str = "availability_preserving"
    load: str = ""  # eager | on_demand; "": the server's
    check_before_available: bool | None = None  # None: the server's setting
    batching: "BatchingConfig | None" = None  # None: no batching unless the server enables it
    devices: tuple[str, ...] = ()  # TensorFlow device names; () = TensorFlow places the model
    instances_per_device: int = 1
    response_cache: "ResponseCacheConfig | None" = None  # None: no cache


@dataclass(frozen=True)
class ResponseCacheConfig:
    max_entries: int = 1024
    max_bytes: int = 64 * 1024 * 1024


LOAD_POLICIES = ("availability_preserving", "resource_preserving")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    grpc_port: int = 8500
    rest_port: int = 8501
    grpc_socket_path: str = ""
    rest_api_timeout_ms: int = 30000
    file_system_poll_wait_seconds: float = 1
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60
    num_load_threads: int = 4
    executor_threads: int = 4
    saved_model_tags: tuple[str, ...] = ("serve",)
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    allow_version_labels_for_unavailable_models: bool = False
    allow_empty_model_config: bool = False
    shutdown_grace_seconds: float = 30
    max_request_bytes: int = 64 * 1024 * 1024
    rest_max_connections: int = 0  # 0 = half the descriptor limit (transports/descriptors.py)
    rest_max_header_bytes: int = 64 * 1024
    rest_max_url_bytes: int = 8 * 1024
    rest_max_pipelined_requests: int = 100
    rest_header_timeout_seconds: float = 10
    rest_idle_timeout_seconds: float = 75  # above the usual load balancers' idle timeout (60 s)
    grpc_max_connections: int = 0  # 0 = a quarter of the descriptor limit (transports/descriptors.py)
    grpc_max_concurrent_streams: int = 0  # 0 = gRPC's default (no limit), as TF Serving
    grpc_transport: str = ""  # native | aio; "" = native where built
    grpc_max_receive_bytes: int = MAX_MESSAGE_BYTES
    max_tensor_elements: int = 0
    ssl_config: SSLConfig | None = None  # PEM contents; the gRPC and REST frontends both use it
    auth_token: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    enable_metrics: bool = True
    model_root: str = ""  # when set, every model path must resolve (symlinks, ..) inside it
    metrics_path: str = METRICS_PATH
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    model_config_file_poll_wait_seconds: float = 0
    enable_batching: bool = False
    batching_parameters: "BatchingConfig | None" = None  # for every model when enable_batching is set
    cpu_devices: int = 1
    check_before_available: bool = True
    custom_op_libraries: tuple[str, ...] = ()
    import_modules: tuple[str, ...] = ()
    model_cache_dir: str = ""
    tracing_endpoint: str = ""  # "" = no tracing
    tracing_sample_rate: float = 1.0
    load: str = "eager"  # eager | on_demand: how models that do not say load
    model_memory_budget_mb: int = 0  # 0 = no budget
    gpu_memory_budget_mb: int = 0  # per GPU; 0 = no budget
    on_demand_load_timeout_ms: int = 60000
    model_config_file: str = ""  # where the model list came from, for reloads
    model_config_format: str = ""  # "yaml" or "text_proto" (TF Serving's ModelServerConfig)
    models: tuple[ModelConfig, ...] = ()

    def batching_for(self, model: ModelConfig) -> "BatchingConfig | None":
        """The model's own batching section, else the server-wide one when batching is enabled."""
        if model.batching is not None:
            return model.batching
        if self.enable_batching:
            return self.batching_parameters or BatchingConfig()
        return None

    def on_demand(self, model: ModelConfig) -> bool:
        """Whether the model loads on its first request (and may be unloaded to make room)."""
        return (model.load or self.load) == "on_demand"

    def checks_before_available(self, model: ModelConfig) -> bool:
        """Whether a new version of the model runs each signature once before it serves."""
        return self.check_before_available if model.check_before_available is None else model.check_before_available

    def with_overrides(self, **changes) -> "ServerConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------- models.yaml

_SERVER_TYPES = {
    "host": str,
    "grpc_port": int,
    "rest_port": int,
    "grpc_socket_path": str,
    "rest_api_timeout_ms": int,
    "file_system_poll_wait_seconds": (int, float),
    "max_num_load_retries": int,
    "load_retry_interval_seconds": (int, float),
    "num_load_threads": int,
    "executor_threads": int,
    "saved_model_tags": list,
    "tensorflow_intra_op_parallelism": int,
    "tensorflow_inter_op_parallelism": int,
    "allow_version_labels_for_unavailable_models": bool,
    "allow_empty_model_config": bool,
    "shutdown_grace_seconds": (int, float),
    "max_request_bytes": int,
    "rest_max_connections": int,
    "rest_max_header_bytes": int,
    "rest_max_url_bytes": int,
    "rest_max_pipelined_requests": int,
    "rest_header_timeout_seconds": (int, float),
    "rest_idle_timeout_seconds": (int, float),
    "grpc_max_connections": int,
    "grpc_max_concurrent_streams": int,
    "grpc_transport": str,
    "grpc_max_receive_bytes": int,
    "max_tensor_elements": int,
    "ssl_config_file": str,
    "auth_token_file": str,
    "admin_token_file": str,
    "enable_metrics": bool,
    "model_root": str,
    "metrics_path": str,
    "enable_model_warmup": bool,
    "num_request_iterations_for_warmup": int,
    "model_config_file_poll_wait_seconds": (int, float),
    "enable_batching": bool,
    "batching_parameters": dict,
    "cpu_devices": int,
    "check_before_available": bool,
    "custom_op_libraries": list,
    "import_modules": list,
    "model_cache_dir": str,
    "tracing": dict,
    "load": str,
    "model_memory_budget_mb": int,
    "gpu_memory_budget_mb": int,
    "on_demand_load_timeout_ms": int,
}
_LIST_KEYS = ("saved_model_tags", "custom_op_libraries", "import_modules")  # lists of strings, kept as tuples
# Transport limits that must be positive, and those where 0 means "automatic" or "none".
_LIMITS_AT_LEAST_1 = ("rest_max_header_bytes", "rest_max_url_bytes", "rest_max_pipelined_requests")
_LIMITS_AT_LEAST_0 = ("rest_max_connections", "rest_header_timeout_seconds", "rest_idle_timeout_seconds", "grpc_max_connections",
                      "grpc_max_concurrent_streams")
_MODEL_KEYS = ("name", "base_path", "version_policy", "version_labels", "runtime", "load_policy", "load", "check_before_available", "batching",
               "devices", "instances_per_device", "response_cache")


def load_yaml(path: str) -> ServerConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    doc = _mapping(doc if doc is not None else {}, path)
    _known(doc, ("server", "models"), path)
    server = _server_options(_mapping(doc.get("server") or {}, "server"))
    root = Path(path).resolve().parent
    _read_security_files(server, root)
    for key in ("model_root", "model_cache_dir"):
        if server.get(key):
            server[key] = os.path.normpath(root / server[key])
    if server.get("custom_op_libraries"):
        server["custom_op_libraries"] = tuple(os.path.normpath(root / p) for p in server["custom_op_libraries"])
    models = doc.get("models") or []
    if not isinstance(models, list):
        raise ConfigError("models: must be a list of models")
    parsed = tuple(_yaml_model(m, f"models[{i}]", root) for i, m in enumerate(models))
    return _check_models(
        ServerConfig(**server, models=parsed, model_config_file=str(Path(path).resolve()), model_config_format="yaml")
    )


def read_model_list(config: ServerConfig) -> tuple[ModelConfig, ...]:
    """Re-read the model list from the file the server was started with."""
    if config.model_config_format == "yaml":
        return load_yaml(config.model_config_file).models
    if config.model_config_format == "text_proto":
        return load_model_config_file(config.model_config_file)
    raise ConfigError("the server was started without a model config file: nothing to re-read")


def _server_options(section: dict) -> dict:
    _known(section, tuple(_SERVER_TYPES), "server")
    out = {}
    for key, value in section.items():
        expected = _SERVER_TYPES[key]
        if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
            names = "/".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__
            raise ConfigError(f"server.{key}: expected {names}, got {value!r}")
        out[key] = tuple(str(t) for t in value) if key in _LIST_KEYS else value
    for port in ("grpc_port", "rest_port"):
        if port in out and not 0 <= out[port] <= 65535:
            raise ConfigError(f"server.{port}: {out[port]} is not a port number")
    if out.get("grpc_transport", "") not in ("", "native", "aio"):
        raise ConfigError(f"server.grpc_transport: must be native or aio, got {out['grpc_transport']!r}")
    if "batching_parameters" in out:
        out["batching_parameters"] = batching_config(out["batching_parameters"], "server.batching_parameters")
    if "tracing" in out:
        out.update(_tracing(out.pop("tracing")))
    if "load" in out:
        check_load(out["load"], "server.load")
    for key in ("model_memory_budget_mb", "gpu_memory_budget_mb"):
        if key in out and out[key] < 0:
            raise ConfigError(f"server.{key}: must not be negative")
    if out.get("on_demand_load_timeout_ms", 1) < 1:
        raise ConfigError("server.on_demand_load_timeout_ms: must be at least 1")
    for key in ("num_load_threads", "executor_threads", "cpu_devices", *_LIMITS_AT_LEAST_1):
        if key in out and out[key] < 1:
            raise ConfigError(f"server.{key}: must be at least 1")
    for key in _LIMITS_AT_LEAST_0:
        if key in out and out[key] < 0:
            raise ConfigError(f"server.{key}: must not be negative")
    return out


def _tracing(section: dict) -> dict:
    """server.tracing: {endpoint, sample_rate} -> ServerConfig's tracing_* fields."""
    _known(section, ("endpoint", "sample_rate"), "server.tracing")
    endpoint, rate = section.get("endpoint", ""), section.get("sample_rate", 1.0)
    if not isinstance(endpoint, str):
        raise ConfigError(f"server.tracing.endpoint: expected host:port, got {endpoint!r}")
    check_sample_rate(rate, "server.tracing.sample_rate")
    return {"tracing_endpoint": endpoint, "tracing_sample_rate": float(rate)}


LOADS = ("eager", "on_demand")


def check_load(value, where: str) -> None:
    if value not in LOADS:
        raise ConfigError(f"{where}: must be eager or on_demand, got {value!r}")


def check_sample_rate(rate, where: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ConfigError(f"{where}: expected a fraction from 0 to 1, got {rate!r}")


def _read_security_files(server: dict, root: Path) -> None:
    """server.ssl_config_file / auth_token_file / admin_token_file -> the contents ServerConfig holds."""
    ssl_file = server.pop("ssl_config_file", "")
    if ssl_file:
        try:
            server["ssl_config"] = load_ssl_config_file(str(root / ssl_file))
        except SSLConfigError as exc:
            raise ConfigError(f"server.ssl_config_file: {exc}") from None
    for key in ("auth_token", "admin_token"):
        token_file = server.pop(f"{key}_file", "")
        if token_file:
            server[key] = read_token_file(str(root / token_file), f"server.{key}_file")


def read_token_file(path: str, where: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"{where}: {path} must hold one token (no spaces)")
    return token


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(base_path: str) -> bool:
    """A base path in object storage (s3://bucket/prefix, gs://..., any fsspec URL), not a local directory."""
    return bool(_URL.match(base_path))


def outside_root(path: str, root: str, recursive: bool = False) -> str | None:
    """Where `path` (with `recursive`, or anything under it) really is if that is outside
    `root` (symlinks and .. resolved); None when it lies inside, or when no root is set."""
    if not root:
        return None
    real_root = os.path.realpath(root)

    def outside(p: str) -> str | None:
        real = os.path.realpath(p)
        return None if real == real_root or real.startswith(real_root + os.sep) else real

    if outside(path) or not recursive:
        return outside(path)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            escaped = outside(os.path.join(parent, name))
            if escaped:
                return escaped
    return None


def load_monitoring_config_file(path: str) -> str:
    """TF Serving's --monitoring_config_file (MonitoringConfig text proto) -> the metrics path.

    fastserve always exports its metrics; the file only moves them to prometheus_config.path.
    """
    classes = message_classes("fastserve/monitoring_config.proto", "tensorflow.serving", {
        "PrometheusConfig": [(1, "enable", "bool"), (2, "path", "string")],
        "MonitoringConfig": [(1, "prometheus_config", "PrometheusConfig")],
    })
    proto = classes["MonitoringConfig"]()
    try:
        text_format.Parse(Path(path).read_text(), proto)
    except OSError as exc:
        raise ConfigError(f"cannot read monitoring config file {path}: {exc.strerror}") from None
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: invalid MonitoringConfig text proto: {exc}") from None
    metrics_path = proto.prometheus_config.path or ServerConfig.metrics_path
    if not metrics_path.startswith("/"):
        raise ConfigError(f"{path}: prometheus_config.path must start with '/', got {metrics_path!r}")
    return metrics_path


def check_model_root(models, root: str) -> None:
    """Refuse models whose base_path escapes the model root (ConfigError naming the model)."""
    for model in models:
        if root and is_url(model.base_path):
            raise ConfigError(f"model {model.name!r}: base_path {model.base_path} is in object storage, outside model_root {root}")
        escaped = outside_root(model.base_path, root)
        if escaped:
            raise ConfigError(f"model {model.name!r}: base_path {model.base_path} resolves to {escaped}, outside model_root {root}")


def _yaml_model(doc, where: str, root: Path) -> ModelConfig:
    doc = _mapping(doc, where)
    _known(doc, _MODEL_KEYS, where)
    for key in ("name", "base_path"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ConfigError(f"{where}.{key}: required, a non-empty string")
    runtime = doc.get("runtime", AUTO)
    if runtime not in RUNTIMES:
        raise ConfigError(f"{where}.runtime: must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    load_policy = doc.get("load_policy", "availability_preserving")
    if load_policy not in LOAD_POLICIES:
        raise ConfigError(f"{where}.load_policy: must be one of {', '.join(LOAD_POLICIES)}, got {load_policy!r}")
    if "load" in doc:
        check_load(doc["load"], f"{where}.load")
    check = doc.get("check_before_available")
    if check is not None and not isinstance(check, bool):
        raise ConfigError(f"{where}.check_before_available: expected true or false, got {check!r}")
    base_path = doc["base_path"]
    if not os.path.isabs(base_path) and not is_url(base_path):
        base_path = str(root / base_path)
    return ModelConfig(
        name=doc["name"],
        base_path=base_path,
        version_policy=_yaml_policy(doc.get("version_policy"), f"{where}.version_policy"),
        version_labels=_labels(doc.get("version_labels") or {}, f"{where}.version_labels"),
        runtime=runtime,
        load_policy=load_policy,
        load=doc.get("load", ""),
        check_before_available=check,
        batching=None if doc.get("batching") is None else batching_config(doc["batching"], f"{where}.batching"),
        **_placement(doc, where),
        response_cache=None if doc.get("response_cache") is None else _response_cache(doc["response_cache"], f"{where}.response_cache"),
    )


def _response_cache(doc, where: str) -> ResponseCacheConfig:
    doc = _mapping(doc, where)
    _known(doc, ("max_entries", "max_bytes"), where)
    for key, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")
    return ResponseCacheConfig(**doc)


def _placement(doc: dict, where: str) -> dict:
    """devices and instances_per_device of one model."""
    from fastserve.batching.devices import normalize

    names = doc.get("devices") or []
    if not isinstance(names, list):
        raise ConfigError(f"{where}.devices: expected a list of device names (CPU:N, GPU:N), got {names!r}")
    try:
        devices = tuple(normalize(name) for name in names)
    except ValueError as exc:
        raise ConfigError(f"{where}.devices: {exc}") from None
    if len(set(devices)) != len(devices):
        raise ConfigError(f"{where}.devices: a device is listed twice")
    instances = doc.get("instances_per_device", 1)
    if not isinstance(instances, int) or isinstance(instances, bool) or instances < 1:
        raise ConfigError(f"{where}.instances_per_device: expected a positive integer, got {instances!r}")
    return {"devices": devices, "instances_per_device": instances}


def _yaml_policy(value, where: str) -> VersionPolicy:
    if value is None:
        return VersionPolicy()
    if value == "all":
        return VersionPolicy("all")
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"{where}: expected 'all', {{latest: N}} or {{specific: [versions]}}, got {value!r}")
    (kind, arg), = value.items()
    if kind == "latest":
        if not isinstance(arg, int) or isinstance(arg, bool) or arg < 1:
            raise ConfigError(f"{where}.latest: expected a positive integer, got {arg!r}")
        return VersionPolicy("latest", num_versions=arg)
    if kind == "specific":
        if not isinstance(arg, list) or not arg or not all(isinstance(v, int) and v >= 0 for v in arg):
            raise ConfigError(f"{where}.specific: expected a non-empty list of version numbers, got {arg!r}")
        return VersionPolicy("specific", versions=tuple(arg))
    if kind == "all":
        return VersionPolicy("all")
    raise ConfigError(f"{where}: unknown policy {kind!r} (expected latest, all or specific)")


def _labels(value, where: str) -> dict:
    value = _mapping(value, where)
    for label, version in value.items():
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ConfigError(f"{where}.{label}: expected a version number, got {version!r}")
    return {str(k): v for k, v in value.items()}


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _known(doc: dict, keys, where: str) -> None:
    for key in doc:
        if key not in keys:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of: {', '.join(keys)})")


def _check_models(config: ServerConfig) -> ServerConfig:
    seen = set()
    for model in config.models:
        if model.name in seen:
            raise ConfigError(f"model {model.name!r} is configured twice")
        seen.add(model.name)
    return config


# ---------------------------------------------------------------- TF Serving's model_config_file


def load_model_config_file(path: str) -> tuple[ModelConfig, ...]:
    """Parse TF Serving's text-proto ModelServerConfig (--model_config_file)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read model config file {path}: {exc.strerror}") from None
    return parse_model_server_config(text, path)


def parse_model_server_config(text: str, where: str = "model config") -> tuple[ModelConfig, ...]:
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"{where}: invalid ModelServerConfig text proto: {exc}") from None
    if proto.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{where}: custom_model_config is not supported; use model_config_list")
    return models_from_proto(proto.model_config_list.config, where)


def models_from_proto(configs, where: str = "model config") -> tuple[ModelConfig, ...]:
    """ModelConfig protos (from a file or a ReloadConfigRequest) -> ModelConfig objects."""
    models = []
    for i, m in enumerate(configs):
        label = f"{where}: config[{i}]"
        if not m.name or not m.base_path:
            raise ConfigError(f"{label}: name and base_path are required")
        if m.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"{label}: model_platform {m.model_platform!r} is not supported (only 'tensorflow')")
        models.append(
            ModelConfig(
                name=m.name,
                base_path=m.base_path,
                version_policy=_proto_policy(m.model_version_policy),
                version_labels=dict(m.version_labels),
            )
        )
    return _check_models(ServerConfig(models=tuple(models))).models


def _proto_policy(policy) -> VersionPolicy:
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        return VersionPolicy("specific", versions=tuple(policy.specific.versions))
    if kind == "latest":
        return VersionPolicy("latest", num_versions=policy.latest.num_versions or 1)
    return VersionPolicy()


# ---------------------------------------------------------------- batching


@dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's BatchingParameters, with its defaults and meanings."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0 = max_batch_size
    # fastserve's own, beside TF Serving's (models.yaml): latency-aware scheduling and queue policies
    target_latency_ms: float = 0  # 0 = off: a batch closes when full or at batch_timeout_micros, as TF Serving's
    priority_levels: int = 1
    default_priority_level: int = 0  # 0 = the lowest (priority_levels)
    max_queue_delay_ms: float = 0  # every level's, unless priority_queue_policy says otherwise; 0 = none
    max_queue_size: int = 0  # rows waiting at one level; 0 = only max_enqueued_batches bounds the queue
    priority_queue_policy: tuple[tuple[int, "QueuePolicy"], ...] = ()  # (level, its own policy)
    max_concurrent_batches: int = 0  # batches of the model running at once, all versions; 0 = one per batch thread

    @property
    def execution_batch_size(self) -> int:
        """Rows in one executed batch (max_execution_batch_size applies only with splitting)."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    @property
    def timeout_seconds(self) -> float:
        """The longest a batch waits for more rows: batch_timeout_micros; with a latency target
        and no timeout of its own, the target."""
        if self.batch_timeout_micros or not self.target_latency_ms:
            return self.batch_timeout_micros / 1e6
        return self.target_latency_ms / 1e3

    @property
    def default_level(self) -> int:
        return self.default_priority_level or self.priority_levels

    def level(self, priority: int) -> int:
        """The level (1 = highest) of a request's priority: 0 or one past the last level is the
        default level, as Triton's."""
        return priority if 0 < priority <= self.priority_levels else self.default_level

    def queue_policy(self, level: int) -> "QueuePolicy":
        return dict(self.priority_queue_policy).get(level, QueuePolicy(self.max_queue_delay_ms, self.max_queue_size))

    def padded_size(self, rows: int) -> int:
        """The batch size a batch of `rows` runs at: the next allowed size, else rows."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


@dataclass(frozen=True)
class QueuePolicy:
    """What one priority level's queue allows."""

    max_queue_delay_ms: float = 0  # a request that waited longer is answered UNAVAILABLE, never run; 0 = no limit
    max_queue_size: int = 0  # rows; a request beyond it is refused at once (RESOURCE_EXHAUSTED); 0 = no limit


_QUEUE_POLICY_TYPES = {"max_queue_delay_ms": (int, float), "max_queue_size": int}
_BATCHING_TYPES = {
    "max_batch_size": int,
    "batch_timeout_micros": int,
    "max_enqueued_batches": int,
    "num_batch_threads": int,
    "allowed_batch_sizes": list,
    "pad_variable_length_inputs": bool,
    "enable_large_batch_splitting": bool,
    "max_execution_batch_size": int,
    "target_latency_ms": (int, float),
    "priority_levels": int,
    "default_priority_level": int,
    "max_queue_delay_ms": (int, float),
    "max_queue_size": int,
    "priority_queue_policy": dict,
    "max_concurrent_batches": int,
}


def batching_config(values, where: str) -> BatchingConfig:
    """Validate a batching section (models.yaml, or a parsed BatchingParameters)."""
    values = dict(_mapping(values, where))
    _known(values, tuple(_BATCHING_TYPES), where)
    _typed(values, _BATCHING_TYPES, where)
    for key in ("max_batch_size", "max_enqueued_batches", "num_batch_threads", "priority_levels"):
        if key in values and values[key] < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1, got {values[key]}")
    for key in ("batch_timeout_micros", "max_execution_batch_size", "target_latency_ms", "default_priority_level",
                "max_queue_delay_ms", "max_queue_size", "max_concurrent_batches"):
        if key in values and values[key] < 0:
            raise ConfigError(f"{where}.{key}: must not be negative, got {values[key]}")
    levels = values.get("priority_levels", 1)
    if values.get("default_priority_level", 0) > levels:
        raise ConfigError(f"{where}.default_priority_level: must be a level from 1 to priority_levels ({levels})")
    if "priority_queue_policy" in values:
        model_wide = {k: values[k] for k in _QUEUE_POLICY_TYPES if k in values}
        values["priority_queue_policy"] = _queue_policies(values["priority_queue_policy"], levels, model_wide,
                                                          f"{where}.priority_queue_policy")
    sizes = values.get("allowed_batch_sizes", [])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise ConfigError(f"{where}.allowed_batch_sizes: expected positive integers, got {sizes!r}")
    values["allowed_batch_sizes"] = tuple(sizes)
    config = BatchingConfig(**values)
    if config.max_execution_batch_size > config.max_batch_size:
        raise ConfigError(f"{where}.max_execution_batch_size: must not exceed max_batch_size ({config.max_batch_size})")
    if sizes:
        if any(a >= b for a, b in zip(sizes, sizes[1:])):
            raise ConfigError(f"{where}.allowed_batch_sizes: entries must be monotonically increasing, got {sizes}")
        if sizes[-1] != config.execution_batch_size:
            limit = "max_execution_batch_size" if config.execution_batch_size != config.max_batch_size else "max_batch_size"
            raise ConfigError(
                f"{where}.allowed_batch_sizes: the final entry ({sizes[-1]}) must equal {limit} ({config.execution_batch_size})"
            )
    return config


def _typed(values: dict, types: dict, where: str) -> None:
    for key, value in values.items():
        expected = types[key]
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            name = expected.__name__ if isinstance(expected, type) else "number"
            raise ConfigError(f"{where}.{key}: expected {name}, got {value!r}")


def _queue_policies(doc: dict, levels: int, model_wide: dict, where: str) -> tuple[tuple[int, QueuePolicy], ...]:
    """{level: {max_queue_delay_ms, max_queue_size}} of priority_queue_policy; what a level does
    not say is the model's."""
    policies = []
    for level, policy in doc.items():
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= levels:
            raise ConfigError(f"{where}.{level}: expected a priority level from 1 to priority_levels ({levels})")
        policy = dict(_mapping(policy, f"{where}.{level}"))
        _known(policy, tuple(_QUEUE_POLICY_TYPES), f"{where}.{level}")
        _typed(policy, _QUEUE_POLICY_TYPES, f"{where}.{level}")
        for key, value in policy.items():
            if value < 0:
                raise ConfigError(f"{where}.{level}.{key}: must not be negative, got {value}")
        policies.append((level, QueuePolicy(**{**model_wide, **policy})))
    return tuple(sorted(policies))


def load_batching_parameters_file(path: str) -> BatchingConfig:
    """Parse TF Serving's --batching_parameters_file (a BatchingParameters text proto)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read batching parameters file {path}: {exc.strerror}") from None
    return parse_batching_parameters(text, path)


def parse_batching_parameters(text: str, where: str = "batching parameters") -> BatchingConfig:
    proto = _batching_parameters_class()()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"{where}: invalid BatchingParameters text proto: {exc}") from None
    values = {}
    for descriptor, value in proto.ListFields():
        if descriptor.name == "thread_pool_name":
            continue  # fastserve runs each model's batches on its own threads
        if descriptor.message_type is not None:  # google.protobuf.*Value wrappers
            value = value.value
        values[descriptor.name] = list(value) if descriptor.name == "allowed_batch_sizes" else value
    return batching_config(values, where)


def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters, built at run time: the pip package
    tensorflow-serving-api does not ship session_bundle_config_pb2."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    fields = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="fastserve/batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    for number, name, wrapper in (
        (1, "max_batch_size", "Int64Value"),
        (2, "batch_timeout_micros", "Int64Value"),
        (3, "max_enqueued_batches", "Int64Value"),
        (4, "num_batch_threads", "Int64Value"),
        (5, "thread_pool_name", "StringValue"),
        (8, "enable_large_batch_splitting", "BoolValue"),
        (9, "max_execution_batch_size", "Int64Value"),
    ):
        message.field.add(name=name, number=number, type=fields.TYPE_MESSAGE,
                          type_name=f".google.protobuf.{wrapper}", label=fields.LABEL_OPTIONAL)
    message.field.add(name="allowed_batch_sizes", number=6, type=fields.TYPE_INT64, label=fields.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=fields.TYPE_BOOL, label=fields.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
