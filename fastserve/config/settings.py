"""The server's settings, in one table: ServerConfig's fields.

Each field is a setting with its type, default, help, flag (TF Serving's name and meaning
where TF Serving has it), key in models.yaml's `server:` section and check. The command
line and `fastserve --help`, the checks of the `server:` section and `--print_config` are
all made from this table: adding a setting is one field here, plus its use.
"""
import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fastserve.config.batching import BatchingConfig, batching_config, load_batching_parameters_file
from fastserve.config.checks import ConfigError, fraction, known, share
from fastserve.tls import SSLConfig, SSLConfigError, load_ssl_config_file

if TYPE_CHECKING:
    from fastserve.config.models import ModelConfig

MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's largest: no practical limit unless configured, as TF Serving
METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's Prometheus path; /metrics is served too
LOADS = ("eager", "on_demand")

Check = Callable[[Any], "str | None"]  # why a value is wrong (None: it is fine)


@dataclass(frozen=True)
class Setting:
    """A ServerConfig field's entry in the table."""

    help: str
    flag: str | None = ""  # its flag without "--": "" = the field's name; None: no flag
    yaml: str | None = ""  # its key in models.yaml's server section: "" = the field's name; None: none;
    #                        "tracing.endpoint": key endpoint of the section tracing
    tf_serving: bool = False  # the flag is TF Serving's
    check: Check | None = None
    choices: tuple[str, ...] = ()  # the values it may take (its default, too)
    raw: type | None = None  # what models.yaml and the flag give, where that is not the field's type
    expected: str = ""  # what a models.yaml value must be, in its type error ("" = the type's name)
    # The value from the flag's (value, "--flag") or the key's (value, "server.key", models.yaml's folder), where it is
    # not the value itself; None keeps the setting as it is.
    from_flag: Callable[[Any, str], Any] | None = None
    from_yaml: Callable[[Any, str, Path], Any] | None = None
    secret: bool = False  # masked by --print_config


def setting(default: Any, help: str, **entry: Any) -> Any:
    """A ServerConfig field: its default, and its Setting (see there for `entry`)."""
    secret = entry.get("secret", False)
    return field(default=default, repr=not secret, metadata={"setting": Setting(help, **entry)})


# ---------------------------------------------------------------- checks and conversions


def at_least(minimum: int) -> Check:
    return lambda value: f"must be at least {minimum}" if value < minimum else None


def not_negative(value) -> str | None:
    return "must not be negative" if value < 0 else None


def port(value) -> str | None:
    return None if 0 <= value <= 65535 else f"{value} is not a port number"


def read_token_file(path: str, where: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"{where}: {path} must hold one token (no spaces)")
    return token


def _ssl_config_file(path: str, where: str) -> SSLConfig:
    try:
        return load_ssl_config_file(path)
    except SSLConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _metrics_path(path: str, where: str) -> str | None:
    """--monitoring_config_file: the metrics path its MonitoringConfig names."""
    # Imported here: the TF Serving protos' model list needs the models, which need these settings.
    from fastserve.config.tf_serving import load_monitoring_config_file

    return load_monitoring_config_file(path) if path else None


def _file(read: Callable[[str, str], Any]) -> dict:
    """The entry of a setting read from the file its flag or key names (relative to models.yaml);
    an empty name keeps the setting as it is."""
    return {"raw": str, "from_flag": lambda path, where: read(path, where) if path else None,
            "from_yaml": lambda path, where, root: read(str(root / path), where) if path else None}


def _in_folder(path: str, where: str, root: Path) -> str:
    return os.path.normpath(root / path) if path else path


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class ServerConfig:
    host: str = setting("0.0.0.0", "address both frontends bind")
    grpc_port: int = setting(8500, "gRPC port", flag="port", tf_serving=True, check=port)
    rest_port: int = setting(8501, "REST port; 0 disables REST (default 8501 in models.yaml, 0 with TF Serving's flags)",
                             flag="rest_api_port", tf_serving=True, check=port)
    grpc_socket_path: str = setting("", "also serve gRPC on this unix socket", tf_serving=True)
    rest_api_timeout_ms: int = setting(30000, "REST request deadline in ms; 0 = none", flag="rest_api_timeout_in_ms", tf_serving=True)
    file_system_poll_wait_seconds: float = setting(1.0, "version polling period; 0 = once at start, < 0 = never", tf_serving=True)
    max_num_load_retries: int = setting(5, "retries after a failed load", tf_serving=True)
    load_retry_interval_seconds: float = setting(
        60.0, "wait between load retries, in seconds (the flag: in microseconds, default 60000000)",
        flag="load_retry_interval_micros", tf_serving=True, from_flag=lambda micros, where: micros / 1e6)
    num_load_threads: int = setting(4, "threads that load models", tf_serving=True, check=at_least(1))
    executor_threads: int = setting(4, "threads that run models", check=at_least(1))
    saved_model_tags: tuple[str, ...] = setting(("serve",), "MetaGraph tags to load (the flag: comma-separated)", tf_serving=True)
    tensorflow_intra_op_parallelism: int = setting(0, "intra-op threads; 0 = TensorFlow decides", tf_serving=True)
    tensorflow_inter_op_parallelism: int = setting(0, "inter-op threads; 0 = TensorFlow decides", tf_serving=True)
    allow_version_labels_for_unavailable_models: bool = setting(
        False, "a version label may name a version that is not available", tf_serving=True)
    allow_empty_model_config: bool = setting(False, "a reload that lists no models unloads them all (else it is refused)")
    shutdown_grace_seconds: float = setting(30.0, "SIGTERM: how long in-flight requests may take")
    max_request_bytes: int = setting(64 * 1024 * 1024, "REST body limit; 413 above it")
    rest_max_connections: int = setting(
        0, "REST connections open at once; more are answered 503 and closed; 0 = half the file descriptor limit",
        check=not_negative)
    rest_max_header_bytes: int = setting(64 * 1024, "REST request line and headers together; 431 above it", check=at_least(1))
    rest_max_url_bytes: int = setting(8 * 1024, "REST request URL; 414 above it", check=at_least(1))
    rest_max_pipelined_requests: int = setting(
        100, "REST requests of one connection in flight; beyond them, and while its client does not read "
             "its answers, the connection is not read", check=at_least(1))
    rest_header_timeout_seconds: float = setting(
        10.0, "a REST request line and headers must arrive within this, else 408; 0 = no limit", check=not_negative)
    rest_idle_timeout_seconds: float = setting(  # above the usual load balancers' idle timeout (60 s)
        75.0, "a REST connection waiting this long for its next request is closed; 0 = never", check=not_negative)
    grpc_max_connections: int = setting(
        0, "gRPC connections open at once, more are closed as they arrive; 0 = a quarter of the file descriptor limit",
        check=not_negative)
    grpc_max_concurrent_streams: int = setting(
        0, "gRPC calls in flight on one connection (HTTP/2 MAX_CONCURRENT_STREAMS); 0 = gRPC's default, no limit",
        check=not_negative)
    grpc_transport: str = setting("", "gRPC server: native (libgrpc++; the default where built) or aio (grpc.aio)",
                                  choices=("native", "aio"))
    grpc_max_receive_bytes: int = setting(MAX_MESSAGE_BYTES, "gRPC message limit; RESOURCE_EXHAUSTED above it")
    max_tensor_elements: int = setting(0, "elements in one request's input tensors together; 0 = no limit")
    ssl_config: SSLConfig | None = setting(
        None, "TF Serving's SSLConfig text proto: TLS (client_verify: mutual TLS) for gRPC and REST",
        flag="ssl_config_file", yaml="ssl_config_file", tf_serving=True, secret=True, **_file(_ssl_config_file))
    auth_token: str = setting("", "file holding the bearer token every request must send",
                              flag="auth_token_file", yaml="auth_token_file", secret=True, **_file(read_token_file))
    admin_token: str = setting(
        "", "file holding the bearer token the admin surface needs (reloads, V2 repository load/unload); "
            "default: the auth token", flag="admin_token_file", yaml="admin_token_file", secret=True, **_file(read_token_file))
    enable_metrics: bool = setting(True, "per-request Prometheus metrics (false: model states only)")
    model_root: str = setting("", "model paths (configs, reloads, version directories) must resolve inside this directory",
                              from_yaml=_in_folder)
    metrics_path: str = setting(
        METRICS_PATH, "Prometheus scrape path on the REST port (and /metrics); the flag: a MonitoringConfig text proto "
                      "whose prometheus_config.path it is", flag="monitoring_config_file", tf_serving=True,
        from_flag=_metrics_path)
    enable_model_warmup: bool = setting(True, "replay assets.extra/tf_serving_warmup_requests", tf_serving=True)
    num_request_iterations_for_warmup: int = setting(1, "times each warm-up request runs", tf_serving=True)
    model_config_file_poll_wait_seconds: float = setting(0.0, "re-read the model config file this often; 0 = never",
                                                         tf_serving=True)
    enable_batching: bool = setting(False, "batch requests for every model", tf_serving=True)
    batching_parameters: BatchingConfig | None = setting(
        None, "the batching every model gets when enable_batching is set (the flag: a BatchingParameters text proto)",
        flag="batching_parameters_file", tf_serving=True, raw=dict,
        from_flag=lambda path, where: load_batching_parameters_file(path) if path else None,
        from_yaml=lambda section, where, root: batching_config(section, where))
    cpu_devices: int = setting(1, "split the CPU into this many TensorFlow devices (CPU:0..N-1)", flag=None, check=at_least(1))
    check_before_available: bool = setting(
        True, "run every signature of a new version once before it serves (warm-up records, else a synthetic request)")
    custom_op_libraries: tuple[str, ...] = setting(
        (), "TensorFlow op libraries (.so) loaded before any model (tf.load_op_library; the flag: comma-separated)",
        from_yaml=lambda paths, where, root: tuple(os.path.normpath(root / p) for p in paths))
    import_modules: tuple[str, ...] = setting(
        (), "Python modules imported before any model, e.g. tensorflow_text (registers its ops; the flag: comma-separated)")
    model_cache_dir: str = setting(
        "", "local copies of versions served from object storage (s3://, gs://, any fsspec URL as base_path); "
            "default: a temporary directory", from_yaml=_in_folder)
    tracing_endpoint: str = setting("", "OTLP gRPC receiver (host:port, https://host:port for TLS) for OpenTelemetry "
                                        "spans; default: no tracing", yaml="tracing.endpoint", expected="host:port")
    tracing_sample_rate: float = setting(1.0, "fraction of requests traced when the caller's traceparent does not decide",
                                         yaml="tracing.sample_rate", check=fraction, expected="a fraction from 0 to 1")
    load: str = setting("eager", "eager: every model loads at start (TF Serving's way); on_demand: a model loads on its "
                                 "first request (each model may say otherwise)", choices=LOADS)
    model_memory_budget_mb: int = setting(
        0, "host memory for loaded versions; a load past it first unloads the least recently used idle on-demand "
           "versions; 0 = no budget", check=not_negative)
    gpu_memory_budget_mb: int = setting(0, "the same, per GPU; 0 = no budget", check=not_negative)
    on_demand_load_timeout_ms: int = setting(60000, "the longest a request waits for its model to load (or its deadline)",
                                             check=at_least(1))
    on_demand_load_share: float = setting(
        0.25, "the most of the time on-demand loads take: after a load of t seconds the next starts t * (1/share - 1) "
              "later, leaving the cores to the models serving; 1 = back to back", check=share,
        expected="a number more than 0 and at most 1")
    # Not settings: what the models come from, and the models.
    model_config_file: str = ""  # where the model list came from, for reloads
    model_config_format: str = ""  # "yaml" or "text_proto" (TF Serving's ModelServerConfig)
    models: "tuple[ModelConfig, ...]" = ()

    def batching_for(self, model: "ModelConfig") -> BatchingConfig | None:
        """The model's own batching section, else the server-wide one when batching is enabled."""
        if model.batching is not None:
            return model.batching
        if self.enable_batching:
            return self.batching_parameters or BatchingConfig()
        return None

    def on_demand(self, model: "ModelConfig") -> bool:
        """Whether the model loads on its first request (and may be unloaded to make room)."""
        return (model.load or self.load) == "on_demand"

    def checks_before_available(self, model: "ModelConfig") -> bool:
        """Whether a new version of the model runs each signature once before it serves."""
        return self.check_before_available if model.check_before_available is None else model.check_before_available

    def with_overrides(self, **changes) -> "ServerConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------- what the table makes


@dataclass(frozen=True)
class Entry:
    """A setting as the parsers see it."""

    name: str  # ServerConfig's field
    default: Any
    raw: type | tuple[type, ...]  # what models.yaml gives
    setting: Setting

    @property
    def flag(self) -> str | None:
        return self.name if self.setting.flag == "" else self.setting.flag

    @property
    def yaml(self) -> str | None:
        return self.name if self.setting.yaml == "" else self.setting.yaml

    def problem(self, value) -> str | None:
        """Why the value (of the raw type) is not one this setting takes."""
        choices = self.setting.choices
        if choices and value != self.default and value not in choices:
            return f"must be {' or '.join(choices)}, got {value!r}"
        return self.setting.check(value) if self.setting.check else None


_RAW: dict[Any, type | tuple[type, ...]] = {int: int, float: (int, float), bool: bool, str: str, tuple[str, ...]: list}


def entries() -> tuple[Entry, ...]:
    """The table, in order."""
    return _ENTRIES


_ENTRIES = tuple(
    Entry(f.name, f.default, f.metadata["setting"].raw or _RAW[f.type], f.metadata["setting"])
    for f in dataclasses.fields(ServerConfig) if "setting" in f.metadata
)


def check_load(value, where: str) -> None:
    """A model's load (server.load's choices)."""
    if value not in LOADS:
        raise ConfigError(f"{where}: must be {' or '.join(LOADS)}, got {value!r}")


# ---------------------------------------------------------------- models.yaml's server section


def _type_names(raw) -> str:
    return "/".join(t.__name__ for t in raw) if isinstance(raw, tuple) else raw.__name__


def _of_type(value, raw: type | tuple[type, ...]) -> bool:
    return isinstance(value, raw) and (raw is bool or not isinstance(value, bool))  # a bool is no number


def from_yaml(section: dict, root: Path) -> dict:
    """ServerConfig's values from models.yaml's server section (paths relative to `root`)."""
    top = [e.yaml.split(".")[0] for e in _ENTRIES if e.yaml]
    known(section, tuple(dict.fromkeys(top)), "server")
    values = {}
    for entry in _ENTRIES:
        if not entry.yaml:
            continue
        *outer, key = entry.yaml.split(".")
        doc = section
        if outer:  # a key of a nested section
            if outer[0] not in section:
                continue
            doc = section[outer[0]]
            if not isinstance(doc, dict):
                raise ConfigError(f"server.{outer[0]}: expected dict, got {doc!r}")
            known(doc, tuple(e.yaml.split(".")[1] for e in _ENTRIES if e.yaml and e.yaml.startswith(f"{outer[0]}.")),
                  f"server.{outer[0]}")
        if key not in doc:
            continue
        value: Any = doc[key]
        where = f"server.{entry.yaml}"
        if not _of_type(value, entry.raw):
            raise ConfigError(f"{where}: expected {entry.setting.expected or _type_names(entry.raw)}, got {value!r}")
        problem = entry.problem(value)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        if entry.setting.from_yaml:
            value = entry.setting.from_yaml(value, where, root)
        elif entry.raw is list:
            value = tuple(str(v) for v in value)
        elif isinstance(entry.default, float):
            value = float(value)
        if value is not None:  # None: an empty file name, the setting stays as it is
            values[entry.name] = value
    return values


# ---------------------------------------------------------------- flags


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list: "a,b" -> ("a", "b")."""
    return tuple(t for t in text.split(",") if t)


def _flag_type(entry: Entry) -> Callable[[str], Any]:
    """argparse's type for the flag: the value, checked as models.yaml's is."""
    converters: dict[Any, Callable[[str], Any]] = {(int, float): float, bool: _bool, list: _names, dict: str}  # dict: a file of them
    convert = converters.get(entry.raw) or cast(Callable[[str], Any], entry.raw)  # int or str: the type itself

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {convert.__name__} value: {text!r}") from None
        problem = entry.problem(value) if not (entry.setting.choices or entry.setting.from_flag) else None
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _default_text(entry: Entry) -> str:
    default = entry.default
    if "default" in entry.setting.help or default in ("", (), None):
        return ""
    shown = ",".join(default) if isinstance(default, tuple) else str(default).lower() if isinstance(default, bool) else default
    return f" (default {shown})"


def add_flags(tf_serving: argparse._ArgumentGroup, own: argparse._ArgumentGroup) -> None:
    """A flag for every setting that has one: TF Serving's in its group, fastserve's in the other."""
    for entry in _ENTRIES:
        if not entry.flag:
            continue
        group = tf_serving if entry.setting.tf_serving else own
        extra: dict = {"nargs": "?", "const": True} if entry.raw is bool else {}
        if entry.setting.choices:
            extra["choices"] = entry.setting.choices
        group.add_argument(f"--{entry.flag}", type=_flag_type(entry), help=entry.setting.help + _default_text(entry), **extra)


def from_flags(args: argparse.Namespace) -> dict:
    """ServerConfig's values from the flags given (those not given: absent)."""
    values = {}
    for entry in _ENTRIES:
        value = getattr(args, entry.flag) if entry.flag else None
        if value is None or value == ():  # not given; an empty list keeps the config's
            continue
        values[entry.name] = entry.setting.from_flag(value, f"--{entry.flag}") if entry.setting.from_flag else value
    return values


# ---------------------------------------------------------------- --print_config


def printable(config: ServerConfig) -> dict:
    """The effective configuration as plain data (secrets masked), for --print_config."""
    server = {}
    for entry in _ENTRIES:
        value = getattr(config, entry.name)
        server[entry.name] = "***" if entry.setting.secret and value else _plain(value)
    return {"server": server, "models": [_plain(model) for model in config.models]}


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
