"""models.yaml, and the models it (or TF Serving's model config) lists.

    server:                              # the server's settings (config/settings.py; `fastserve --help`)
      grpc_port: 8500
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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fastserve import text_proto
from fastserve.config import settings
from fastserve.config.batching import BatchingConfig, batching_config
from fastserve.config.checks import ConfigError, known, mapping
from fastserve.config.settings import ServerConfig, check_load

AUTO, SESSION, FUNCTION = "auto", "session", "function"  # the runtimes a model may run on
RUNTIMES = (AUTO, SESSION, FUNCTION)
LOAD_POLICIES = ("availability_preserving", "resource_preserving")
_MODEL_KEYS = ("name", "base_path", "version_policy", "version_labels", "runtime", "load_policy", "load", "check_before_available", "batching",
               "devices", "instances_per_device", "response_cache")


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
class ResponseCacheConfig:
    max_entries: int = 1024
    max_bytes: int = 64 * 1024 * 1024


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
    batching: BatchingConfig | None = None  # None: no batching unless the server enables it
    devices: tuple[str, ...] = ()  # TensorFlow device names; () = TensorFlow places the model
    instances_per_device: int = 1
    response_cache: ResponseCacheConfig | None = None  # None: no cache


def load_yaml(path: str) -> ServerConfig:
    """models.yaml: the server section (a path in it is relative to the file) and the models."""
    text = text_proto.read(path, "config file", ConfigError)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    doc = mapping(doc if doc is not None else {}, path)
    known(doc, ("server", "models"), path)
    root = Path(path).resolve().parent
    server = settings.from_yaml(mapping(doc.get("server") or {}, "server"), root)
    models = doc.get("models") or []
    if not isinstance(models, list):
        raise ConfigError("models: must be a list of models")
    parsed = tuple(_yaml_model(m, f"models[{i}]", root) for i, m in enumerate(models))
    return ServerConfig(**server, models=check_unique(parsed), model_config_file=str(Path(path).resolve()),
                        model_config_format="yaml")


def check_unique(models: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
    seen = set()
    for model in models:
        if model.name in seen:
            raise ConfigError(f"model {model.name!r} is configured twice")
        seen.add(model.name)
    return models


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


def check_model_root(models, root: str) -> None:
    """Refuse models whose base_path escapes the model root (ConfigError naming the model)."""
    for model in models:
        if root and is_url(model.base_path):
            raise ConfigError(f"model {model.name!r}: base_path {model.base_path} is in object storage, outside model_root {root}")
        escaped = outside_root(model.base_path, root)
        if escaped:
            raise ConfigError(f"model {model.name!r}: base_path {model.base_path} resolves to {escaped}, outside model_root {root}")


def _yaml_model(doc, where: str, root: Path) -> ModelConfig:
    doc = mapping(doc, where)
    known(doc, _MODEL_KEYS, where)
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
    doc = mapping(doc, where)
    known(doc, ("max_entries", "max_bytes"), where)
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
    value = mapping(value, where)
    for label, version in value.items():
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ConfigError(f"{where}.{label}: expected a version number, got {version!r}")
    return {str(k): v for k, v in value.items()}
