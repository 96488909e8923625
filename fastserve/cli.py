"""Command line: TF Serving's flags, or `--config models.yaml`, into one ServerConfig."""
import argparse
import logging
import os
import sys

from fastserve import __version__, logs


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


def _at_least(minimum, kind):
    """An argparse type: a number of this kind, at least minimum."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastserve",
        description="Serve TensorFlow SavedModels over TF Serving's gRPC and REST APIs.",
        epilog="TF Serving's flags work as they do there (--flag=value). Flags given with --config override its server section.",
    )
    add = p.add_argument
    add("--config", help="models.yaml: server options and the models to serve")
    add("--version", action="store_true", help="print the version and exit")
    tfs = p.add_argument_group("TensorFlow Serving flags")
    tfs.add_argument("--port", type=int, help="gRPC port (default 8500)")
    tfs.add_argument("--grpc_socket_path", help="also serve gRPC on this unix socket")
    tfs.add_argument("--rest_api_port", type=int, help="REST port; 0 disables REST (default 0, or the config's)")
    tfs.add_argument("--rest_api_timeout_in_ms", type=int, help="REST request deadline in ms (default 30000)")
    tfs.add_argument("--model_name", help="name of the single model to serve (default 'default')")
    tfs.add_argument("--model_base_path", help="base path of the single model to serve")
    tfs.add_argument("--model_config_file", help="TF Serving ModelServerConfig text proto listing the models")
    tfs.add_argument("--file_system_poll_wait_seconds", type=float, help="version polling period (default 1; 0 = once)")
    tfs.add_argument("--max_num_load_retries", type=int, help="retries after a failed load (default 5)")
    tfs.add_argument("--load_retry_interval_micros", type=int, help="wait between load retries (default 60000000)")
    tfs.add_argument("--num_load_threads", type=int, help="threads that load models (default 4)")
    tfs.add_argument("--saved_model_tags", type=_names, help="comma-separated MetaGraph tags to load (default serve)")
    tfs.add_argument("--tensorflow_session_parallelism", type=int, help="intra- and inter-op threads; 0 = auto")
    tfs.add_argument("--tensorflow_intra_op_parallelism", type=int, help="intra-op threads; 0 = auto")
    tfs.add_argument("--tensorflow_inter_op_parallelism", type=int, help="inter-op threads; 0 = auto")
    tfs.add_argument("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True)
    tfs.add_argument("--model_config_file_poll_wait_seconds", type=float, help="re-read the model config this often; 0 = never")
    tfs.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, help="replay warm-up requests (default true)")
    tfs.add_argument("--num_request_iterations_for_warmup", type=int, help="times each warm-up request runs (default 1)")
    tfs.add_argument("--enable_batching", type=_bool, nargs="?", const=True, help="batch requests for every model")
    tfs.add_argument("--batching_parameters_file", help="BatchingParameters text proto for --enable_batching")
    own = p.add_argument_group("fastserve flags")
    own.add_argument("--host", help="address to bind (default 0.0.0.0)")
    own.add_argument("--executor_threads", type=int, help="threads that run models (default 4)")
    own.add_argument("--check_before_available", type=_bool, nargs="?", const=True,
                     help="run every signature of a new version once before it serves (default true)")
    own.add_argument("--allow_empty_model_config", type=_bool, nargs="?", const=True,
                     help="a reload that lists no models unloads them all (default false: it is refused)")
    own.add_argument("--shutdown_grace_seconds", type=float, help="graceful shutdown limit (default 30)")
    own.add_argument("--grpc_transport", choices=("native", "aio"), help="gRPC server: native (libgrpc++; default where built) or aio (grpc.aio)")
    own.add_argument("--custom_op_libraries", type=_names,
                     help="comma-separated TensorFlow op libraries (.so) to load before any model (tf.load_op_library)")
    own.add_argument("--import_modules", type=_names,
                     help="comma-separated Python modules to import before any model, e.g. tensorflow_text (registers its ops)")
    own.add_argument("--model_cache_dir", help="where versions served from object storage (s3://...) are copied (default: a temporary directory)")
    own.add_argument("--log_level", default=os.environ.get("FASTSERVE_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING, ERROR")
    own.add_argument("--log_format", choices=logs.FORMATS, default=os.environ.get("FASTSERVE_LOG_FORMAT", "plain"),
                     help="plain text or one JSON object per line (default plain)")
    own.add_argument("--request_log_sample_rate", type=float, default=0.0,
                     help="fraction of requests to log, 0..1 (default 0; never payloads)")
    own.add_argument("--load", choices=("eager", "on_demand"),
                     help="eager: every model loads at start (default); on_demand: each loads on its first request")
    own.add_argument("--model_memory_budget_mb", type=_at_least(0, int),
                     help="host memory for loaded versions; past it the least recently used idle on-demand ones unload "
                          "(default 0: no budget)")
    own.add_argument("--gpu_memory_budget_mb", type=_at_least(0, int), help="the same per GPU (default 0: no budget)")
    own.add_argument("--on_demand_load_timeout_ms", type=_at_least(1, int),
                     help="the longest a request waits for its model to load (default 60000, or its deadline)")
    own.add_argument("--tracing_endpoint", help="OTLP gRPC receiver (host:port) for OpenTelemetry spans; default: no tracing")
    own.add_argument("--tracing_sample_rate", type=float,
                     help="fraction of requests traced when the caller's traceparent does not decide (default 1)")
    sec = p.add_argument_group("security and limits")
    tfs.add_argument("--monitoring_config_file", help="MonitoringConfig text proto; its prometheus_config.path is where metrics are served")
    sec.add_argument("--ssl_config_file", help="TF Serving SSLConfig text proto: TLS (client_verify: mutual TLS) for gRPC and REST")
    sec.add_argument("--auth_token_file", help="file holding the bearer token every request must send")
    sec.add_argument("--admin_token_file", help="file holding the bearer token for config reloads and model load/unload")
    sec.add_argument("--max_request_bytes", type=int, help="REST body limit; 413 above it (default 64 MiB)")
    sec.add_argument("--grpc_max_receive_bytes", type=int, help="gRPC message limit; RESOURCE_EXHAUSTED above it (default 2 GiB)")
    sec.add_argument("--max_tensor_elements", type=int, help="input tensor elements one request may hold in all; 0 = no limit")
    sec.add_argument("--rest_max_connections", type=_at_least(0, int),
                     help="REST connections open at once; more are answered 503 (default 0: half the file descriptor limit)")
    sec.add_argument("--rest_max_header_bytes", type=_at_least(1, int), help="REST request line and headers; 431 above it (default 64 KiB)")
    sec.add_argument("--rest_max_url_bytes", type=_at_least(1, int), help="REST request URL; 414 above it (default 8 KiB)")
    sec.add_argument("--rest_max_pipelined_requests", type=_at_least(1, int),
                     help="REST requests of one connection in flight; beyond them it is not read (default 100)")
    sec.add_argument("--rest_header_timeout_seconds", type=_at_least(0, float),
                     help="a REST request line and headers must arrive within this, else 408 (default 10; 0 = no limit)")
    sec.add_argument("--rest_idle_timeout_seconds", type=_at_least(0, float),
                     help="close a REST connection that waits this long for its next request (default 75; 0 = never)")
    sec.add_argument("--grpc_max_connections", type=_at_least(0, int),
                     help="gRPC connections open at once; more are closed (default 0: a quarter of the file descriptor limit)")
    sec.add_argument("--grpc_max_concurrent_streams", type=_at_least(0, int),
                     help="gRPC calls in flight on one connection (default 0: gRPC's, no limit)")
    sec.add_argument("--model_root", help="model paths (configs, reloads, version directories) must resolve inside this directory")
    own.add_argument("--enable_metrics", type=_bool, nargs="?", const=True,
                     help="record per-request Prometheus metrics (default true; model states are always exported)")
    return p


def config_from_args(args: argparse.Namespace):
    """ServerConfig from the parsed flags; raises ConfigError with a clear message."""
    from fastserve import config as cfg

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
    batching = cfg.load_batching_parameters_file(args.batching_parameters_file) if args.batching_parameters_file else None
    intra = args.tensorflow_intra_op_parallelism
    inter = args.tensorflow_inter_op_parallelism
    if args.tensorflow_session_parallelism:
        intra = inter = args.tensorflow_session_parallelism
    retry = args.load_retry_interval_micros
    config = base.with_overrides(
        host=args.host,
        grpc_port=args.port,
        rest_port=args.rest_api_port,
        grpc_socket_path=args.grpc_socket_path,
        rest_api_timeout_ms=args.rest_api_timeout_in_ms,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_seconds=retry / 1e6 if retry is not None else None,
        num_load_threads=args.num_load_threads,
        executor_threads=args.executor_threads,
        saved_model_tags=args.saved_model_tags or None,  # an empty list keeps the default
        tensorflow_intra_op_parallelism=intra,
        tensorflow_inter_op_parallelism=inter,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        allow_empty_model_config=args.allow_empty_model_config,
        shutdown_grace_seconds=args.shutdown_grace_seconds,
        grpc_transport=args.grpc_transport,
        max_request_bytes=args.max_request_bytes,
        grpc_max_receive_bytes=args.grpc_max_receive_bytes,
        max_tensor_elements=args.max_tensor_elements,
        rest_max_connections=args.rest_max_connections,
        rest_max_header_bytes=args.rest_max_header_bytes,
        rest_max_url_bytes=args.rest_max_url_bytes,
        rest_max_pipelined_requests=args.rest_max_pipelined_requests,
        rest_header_timeout_seconds=args.rest_header_timeout_seconds,
        rest_idle_timeout_seconds=args.rest_idle_timeout_seconds,
        grpc_max_connections=args.grpc_max_connections,
        grpc_max_concurrent_streams=args.grpc_max_concurrent_streams,
        enable_metrics=args.enable_metrics,
        model_root=args.model_root,
        metrics_path=cfg.load_monitoring_config_file(args.monitoring_config_file) if args.monitoring_config_file else None,
        **_security_files(args),
        enable_batching=args.enable_batching,
        batching_parameters=batching,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        enable_model_warmup=args.enable_model_warmup,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        check_before_available=args.check_before_available,
        custom_op_libraries=args.custom_op_libraries,
        import_modules=args.import_modules,
        model_cache_dir=args.model_cache_dir,
        load=args.load,
        model_memory_budget_mb=args.model_memory_budget_mb,
        gpu_memory_budget_mb=args.gpu_memory_budget_mb,
        on_demand_load_timeout_ms=args.on_demand_load_timeout_ms,
        tracing_endpoint=args.tracing_endpoint,
        tracing_sample_rate=args.tracing_sample_rate,
    )
    cfg.check_sample_rate(config.tracing_sample_rate, "--tracing_sample_rate")
    cfg.check_model_root(config.models, config.model_root)
    return config


def _security_files(args: argparse.Namespace) -> dict:
    """--ssl_config_file, --auth_token_file, --admin_token_file -> ServerConfig's contents fields."""
    from fastserve import config as cfg
    from fastserve.tls import SSLConfigError, load_ssl_config_file

    out = {}
    if args.ssl_config_file:
        try:
            out["ssl_config"] = load_ssl_config_file(args.ssl_config_file)
        except SSLConfigError as exc:
            raise cfg.ConfigError(f"--ssl_config_file: {exc}") from None
    if args.auth_token_file:
        out["auth_token"] = cfg.read_token_file(args.auth_token_file, "--auth_token_file")
    if args.admin_token_file:
        out["admin_token"] = cfg.read_token_file(args.admin_token_file, "--admin_token_file")
    return out


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
    from fastserve.config import ConfigError

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    from fastserve.server import Server

    try:
        return Server(config).run()
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
