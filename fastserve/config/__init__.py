"""Server configuration: typed objects, parsed once, from the command line, models.yaml or
TF Serving's files; everything else reads ServerConfig / ModelConfig, and nothing re-reads
the files. Parsing a configuration imports no TensorFlow.

    settings.py     the server's settings: one table, from which the flags, --help, the
                    models.yaml server: checks and --print_config are made
    models.py       models.yaml and the models it lists (ModelConfig, version policies)
    tf_serving.py   TF Serving's text protos: ModelServerConfig, MonitoringConfig
    batching.py     batching parameters (TF Serving's BatchingParameters and fastserve's own)
"""
from fastserve.config.batching import BatchingConfig, QueuePolicy, batching_config, parse_batching_parameters
from fastserve.config.checks import ConfigError
from fastserve.config.models import (
    ModelConfig, ResponseCacheConfig, VersionPolicy, check_model_root, is_url, load_yaml, outside_root,
)
from fastserve.config.settings import MAX_MESSAGE_BYTES, METRICS_PATH, ServerConfig
from fastserve.config.tf_serving import load_model_config_file, models_from_proto

__all__ = [
    "BatchingConfig", "QueuePolicy", "batching_config", "parse_batching_parameters", "ConfigError", "ModelConfig",
    "ResponseCacheConfig", "VersionPolicy", "check_model_root", "is_url", "load_yaml", "outside_root", "MAX_MESSAGE_BYTES",
    "METRICS_PATH", "ServerConfig", "load_model_config_file", "models_from_proto", "read_model_list",
]


def read_model_list(config: ServerConfig) -> tuple[ModelConfig, ...]:
    """Re-read the model list from the file the server was started with."""
    if config.model_config_format == "yaml":
        return load_yaml(config.model_config_file).models
    if config.model_config_format == "text_proto":
        return load_model_config_file(config.model_config_file)
    raise ConfigError("the server was started without a model config file: nothing to re-read")
