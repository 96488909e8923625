"""TF Serving's text-proto config files: the ModelServerConfig that --model_config_file
(and a ReloadConfigRequest) lists the models in, and the MonitoringConfig of
--monitoring_config_file. (SSLConfig is tls.py's, BatchingParameters batching.py's.)"""
from tensorflow_serving.config import model_server_config_pb2  # a plain protobuf module: no TensorFlow

from fastserve import text_proto
from fastserve.config.checks import ConfigError
from fastserve.config.models import ModelConfig, VersionPolicy, check_unique
from fastserve.config.settings import METRICS_PATH

# tensorflow.serving.MonitoringConfig (monitoring_config.proto), which the pip package does not ship
_MONITORING_CONFIG = text_proto.message_classes("fastserve/monitoring_config.proto", "tensorflow.serving", {
    "PrometheusConfig": [(1, "enable", "bool"), (2, "path", "string")],
    "MonitoringConfig": [(1, "prometheus_config", "PrometheusConfig")],
})["MonitoringConfig"]


def load_model_config_file(path: str) -> tuple[ModelConfig, ...]:
    """Parse TF Serving's text-proto ModelServerConfig (--model_config_file)."""
    return parse_model_server_config(text_proto.read(path, "model config file", ConfigError), path)


def parse_model_server_config(text: str, where: str = "model config") -> tuple[ModelConfig, ...]:
    proto = text_proto.parse(text, model_server_config_pb2.ModelServerConfig(), where, ConfigError)
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
    return check_unique(tuple(models))


def _proto_policy(policy) -> VersionPolicy:
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        return VersionPolicy("specific", versions=tuple(policy.specific.versions))
    if kind == "latest":
        return VersionPolicy("latest", num_versions=policy.latest.num_versions or 1)
    return VersionPolicy()


def load_monitoring_config_file(path: str) -> str:
    """TF Serving's --monitoring_config_file (MonitoringConfig text proto) -> the metrics path.

    fastserve always exports its metrics; the file only moves them to prometheus_config.path.
    """
    text = text_proto.read(path, "monitoring config file", ConfigError)
    proto = text_proto.parse(text, _MONITORING_CONFIG(), path, ConfigError)
    metrics_path = proto.prometheus_config.path or METRICS_PATH
    if not metrics_path.startswith("/"):
        raise ConfigError(f"{path}: prometheus_config.path must start with '/', got {metrics_path!r}")
    return metrics_path
