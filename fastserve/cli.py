"""Command line: TF Serving's flags, or `--config models.yaml`, into one ServerConfig.

The settings' flags and their help come from the settings table (config/settings.py); the
flags here say what to serve and how the process logs."""
import argparse
import logging
import os
import sys

import yaml

from fastserve import __version__, logs
from fastserve import config as cfg
from fastserve.config import settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastserve",
        description="Serve TensorFlow SavedModels over TF Serving's gRPC and REST APIs.",
        epilog="TF Serving's flags work as they do there (--flag=value). Flags given with --config override its server section.",
    )
    add = p.add_argument
    add("--config", help="models.yaml: server settings and the models to serve")
    add("--version", action="store_true", help="print the version and exit")
    add("--print_config", action="store_true", help="print the effective configuration (secrets masked) and exit")
    tfs = p.add_argument_group("TensorFlow Serving flags")
    tfs.add_argument("--model_name", help="name of the single model to serve (default 'default')")
    tfs.add_argument("--model_base_path", help="base path of the single model to serve")
    tfs.add_argument("--model_config_file", help="TF Serving ModelServerConfig text proto listing the models")
    tfs.add_argument("--tensorflow_session_parallelism", type=int, help="intra- and inter-op threads; 0 = TensorFlow decides")
    own = p.add_argument_group("fastserve flags")
    own.add_argument("--log_level", default=os.environ.get("FASTSERVE_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING, ERROR")
    own.add_argument("--log_format", choices=logs.FORMATS, default=os.environ.get("FASTSERVE_LOG_FORMAT", "plain"),
                     help="plain text or one JSON object per line (default plain)")
    own.add_argument("--request_log_sample_rate", type=float, default=0.0,
                     help="fraction of requests to log, 0..1 (default 0; never payloads)")
    settings.add_flags(tfs, own)
    return p


def config_from_args(args: argparse.Namespace):
    """ServerConfig from the parsed flags; raises ConfigError with a clear message."""
    single_model = args.model_base_path is not None
    if args.config and (single_model or args.model_config_file):
        raise cfg.ConfigError("--config lists the models: do not combine it with --model_base_path or --model_config_file")
    if args.config:
        base = cfg.load_yaml(args.config)
    else:
        if args.model_config_file:
            models = cfg.load_model_config_file(args.model_config_file)
        elif single_model:
            models = (cfg.ModelConfig(name=args.model_name or "default", base_path=args.model_base_path),)
        else:
            raise cfg.ConfigError("Both --model_base_path and --model_config_file are empty! (or give --config models.yaml)")
        base = cfg.ServerConfig(
            rest_port=0, models=models, model_config_file=args.model_config_file or "",
            model_config_format="text_proto" if args.model_config_file else "",
        )
    if args.batching_parameters_file and not (args.enable_batching or base.enable_batching):
        raise cfg.ConfigError(
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
        )
    both = args.tensorflow_session_parallelism or None  # TF Serving's: both parallelisms, whatever their flags say
    config = base.with_overrides(**settings.from_flags(args))
    config = config.with_overrides(tensorflow_intra_op_parallelism=both, tensorflow_inter_op_parallelism=both)
    cfg.check_model_root(config.models, config.model_root)
    return config


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"fastserve {__version__}")
        return 0
    logs.setup(args.log_level, args.log_format, args.request_log_sample_rate)
    log = logging.getLogger("fastserve")
    _quiet_tensorflow()
    try:
        config = config_from_args(args)
    except cfg.ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    if args.print_config:
        print(yaml.safe_dump(settings.printable(config), sort_keys=False), end="")
        return 0
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    from fastserve.server import Server

    try:
        return Server(config).run()
    except cfg.ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
