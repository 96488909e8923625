"""Load one model version so that it can answer: pick the runtime, warm it up, check it.

`runtime: auto` (the default) tries the session runtime first (TF Serving's way, and
the faster one) and keeps it when the version loads and every serving signature
answers; otherwise the function runtime is loaded and checked the same way. `session`
and `function` try only that runtime. A version that no runtime can load or run fails
its load, with the error of each runtime tried.
"""
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf
from grpc import StatusCode
from tensorflow.core.protobuf import config_pb2

from fastserve import metrics
from fastserve.config import ModelConfig, ServerConfig
from fastserve.config.models import AUTO, FUNCTION, SESSION
from fastserve.errors import LoadError
from fastserve.servables import saved_model, warmup
from fastserve.servables.saved_model import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Failure:
    runtime: str
    message: str
    code: StatusCode


def loader(server: ServerConfig) -> Callable[[str, ModelConfig, int], LoadedModel]:
    """The manager's loader: load_version with the server's settings and one session config for all loads."""
    session = session_config(server)
    return lambda path, model, version: load_version(path, model, server, session, version)


def start_runtimes(server: ServerConfig) -> None:
    """Make TensorFlow's thread pools (each runtime makes them on its first use) on the calling
    thread, before any load: threads inherit their maker's nice value, and the load threads run
    niced, so pools first made by a load would run every later request niced too. (After the
    scheduler has split the CPU into server.cpu_devices: TF's devices are fixed from here.)"""
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph, config=session_config(server)) as session:
        session.run(tf.constant(1.0) + 1.0)
    tf.constant(1.0) + 1.0  # the function runtime's (eager) pools


def session_config(config: ServerConfig) -> tf.compat.v1.ConfigProto:
    proto = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=config.tensorflow_intra_op_parallelism,
        inter_op_parallelism_threads=config.tensorflow_inter_op_parallelism,
        allow_soft_placement=True,
        device_count={"CPU": config.cpu_devices},  # server.cpu_devices: CPU:0..N-1 in every session too
    )
    proto.gpu_options.allow_growth = True
    return proto


def load_version(path: str, model: ModelConfig, server: ServerConfig, session_config: config_pb2.ConfigProto,
                 version: int) -> LoadedModel:
    """The loaded, warmed-up and checked version; raises LoadError if no runtime can serve it."""
    failures = []
    for runtime in (SESSION, FUNCTION) if model.runtime == AUTO else (model.runtime,):
        try:
            loaded = saved_model.load(path, runtime, server.saved_model_tags, session_config, model.devices)
        except LoadError as exc:
            failures.append(_Failure(runtime, str(exc), exc.code))
            continue
        try:
            _prove(loaded, model, server)
        except warmup.WarmupError as exc:
            loaded.close()
            failures.append(_Failure(runtime, str(exc), exc.code))
            continue
        _log_choice(model, version, runtime, failures)
        return loaded
    raise _load_error(failures)


def _prove(loaded: LoadedModel, model: ModelConfig, server: ServerConfig) -> None:
    """Warm-up records (when enabled and shipped), then the check of every other signature."""
    ran: set[str] = set()
    if server.enable_model_warmup:
        started = time.monotonic()
        try:
            count, ran = warmup.replay(loaded, server.num_request_iterations_for_warmup)
        except warmup.WarmupError as exc:
            raise warmup.WarmupError(f"warm-up failed: {exc}", exc.code) from None
        if count:
            took = time.monotonic() - started
            metrics.WARMUP_SECONDS.labels(model.name).observe(took)
            log.info("warm-up of %s: %d requests (signatures %s) in %.3fs", loaded.path, count, ", ".join(sorted(ran)), took)
    if not server.checks_before_available(model):
        return
    started = time.monotonic()
    skipped = warmup.check(loaded, ran)
    took = time.monotonic() - started
    metrics.CHECK_SECONDS.labels(model.name).observe(took)
    checked = sorted(set(loaded.signatures) - ran - set(skipped))
    log.info("check of %s (%s runtime): %s answered a synthetic request in %.3fs", loaded.path, loaded.runtime,
             ", ".join(checked) or "no signature", took)
    for key, why in sorted(skipped.items()):
        log.warning("check of %s: signature %s not checked: %s", loaded.path, key, why)


def _log_choice(model: ModelConfig, version: int, runtime: str, failures: list[_Failure]) -> None:
    if model.runtime != AUTO:
        reason = "as configured"
    elif failures:
        reason = f"the session runtime cannot serve it: {failures[0].message}"
    else:
        reason = "it loads and answers on it"
    log.info("model %s version %d: %s runtime (%s)", model.name, version, runtime, reason,
             extra={"fields": {"model": model.name, "version": version, "runtime": runtime, "reason": reason}})


def _load_error(failures: list[_Failure]) -> LoadError:
    first = failures[0]
    message = first.message
    if len(failures) > 1:
        message += f"; the {failures[1].runtime} runtime failed too: {failures[1].message}"
    return LoadError(message, first.code)
