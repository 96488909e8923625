"""Loading one SavedModel version with one runtime, and running its signatures.

Two runtimes sit behind one Signature interface:

* "session": the MetaGraph is loaded into a tf.compat.v1.Session, as TensorFlow
  Serving's C++ loader does, and a signature runs as a Session callable that feeds
  and fetches the SignatureDef's tensors directly. It runs TF1 models that
  tf.saved_model.load cannot restore, lets TensorFlow decide which shapes run (a
  [-1,1] signature accepts shape [3], as in TF Serving) and costs ~45 us a call
  against ~300-550 us for a concrete function call on this machine. The variables
  of TF2 models whose saver misses some (Keras 3) are restored from the object graph.
* "function": tf.saved_model.load and the signatures' concrete functions (TF2's
  object restoring, eager calls).

Which runtime serves a version ("auto") is decided by servables/version_loader.py.
Given devices, a version gets one instance per device: a session whose graph is
placed on that device, or the concrete functions called under that device.
"""
import logging
import os
import threading
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from grpc import StatusCode
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.saved_model import loader_impl

from fastserve.config.models import FUNCTION, SESSION
from fastserve.errors import LoadError, from_tensorflow, invalid_argument
from fastserve.servables import captured_variables
from fastserve.servables.signature import Signature

log = logging.getLogger(__name__)


class LoadedModel:
    """One loaded version: its signatures and the metadata TF Serving reports."""

    def __init__(self, path: str, meta_graph: meta_graph_pb2.MetaGraphDef, signatures: dict[str, Signature], runtime: str,
                 devices: tuple[str | None, ...], closers):
        self.path = path
        self.signature_defs = meta_graph.signature_def  # SignatureDefMap for GetModelMetadata
        self.signatures = signatures
        self.runtime = runtime
        self.devices = devices  # one instance on each; (None,): one instance that TensorFlow places
        self._closers = closers

    def close(self) -> None:
        """Release the graphs, sessions and variables."""
        closers, self._closers = self._closers, []
        self.signatures = {}
        for closer in closers:
            closer()


def read_meta_graph(path: str, tags) -> tuple[loader_impl.SavedModelLoader, meta_graph_pb2.MetaGraphDef]:
    try:
        loader = loader_impl.SavedModelLoader(path)
        return loader, loader.get_meta_graph_def_from_tags(list(tags))
    except OSError as exc:
        raise LoadError(f"not a SavedModel: {first_line(exc)}", StatusCode.NOT_FOUND) from None
    except (RuntimeError, ValueError) as exc:
        raise LoadError(f"cannot read SavedModel at {path}: {first_line(exc)}") from None


def load(path: str, runtime: str, tags=("serve",), session_config: config_pb2.ConfigProto | None = None,
         devices: tuple[str, ...] = ()) -> LoadedModel:
    """Load with one runtime (session or function); one instance per device, or one that
    TensorFlow places when no devices are given."""
    loader, meta_graph = read_meta_graph(path, tags)
    try:
        if runtime == SESSION:
            return _load_session(path, loader, meta_graph, tags, session_config, devices)
        return _load_function(path, meta_graph, tags, devices)
    except Exception as exc:  # noqa: BLE001 - TensorFlow's loaders raise many types (IndexError on a cut file)
        code = StatusCode.UNKNOWN
        if isinstance(exc, tf.errors.OpError):
            code = from_tensorflow(exc).code
        raise LoadError(f"cannot load SavedModel at {path} ({runtime} runtime): {first_line(exc)}", code) from None


def first_line(exc: Exception) -> str:
    """The line of an error that says what went wrong (TensorFlow's session errors start
    with a "Graph execution error:" line)."""
    text = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0] == "Graph execution error:":
        lines = lines[1:]
    return lines[0] if lines else type(exc).__name__


def _servable_keys(meta_graph: meta_graph_pb2.MetaGraphDef):
    # TF2's __saved_model_init_op (and friends) are init ops, not servable signatures.
    return [key for key in meta_graph.signature_def if not key.startswith("__")]


def _placed(per_device: list[tuple[str | None, dict]], meta_graph, runtime, closers, path) -> LoadedModel:
    """A LoadedModel whose signatures run on the first instance and know every other one."""
    default = per_device[0][1]
    signatures = {}
    for key in default:
        instances = {device: runners[key] for device, runners in per_device}
        signatures[key] = Signature(key, meta_graph.signature_def[key], default[key], instances)
    return LoadedModel(path, meta_graph, signatures, runtime, tuple(device for device, _ in per_device), closers)


# ---------------------------------------------------------------- session runtime


def _load_session(path, loader, meta_graph, tags, session_config, devices) -> LoadedModel:
    per_device, closers = [], []
    try:
        for device in devices or (None,):
            session = _session(path, loader, meta_graph, tags, session_config, device)
            closers.append(session.close)
            per_device.append((device, {key: _SessionRunner(session, meta_graph.signature_def[key]) for key in _servable_keys(meta_graph)}))
    except BaseException:
        for close in closers:
            close()
        raise
    return _placed(per_device, meta_graph, SESSION, closers, path)


def _session(path, loader, meta_graph, tags, session_config, device) -> tf.compat.v1.Session:
    """A session holding the version, its graph on `device` (None: as saved, TensorFlow places)."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=session_config)
    try:
        with graph.as_default():
            if device is None:
                loader.load(session, list(tags))
            else:
                with tf.device(device):  # the saved devices are cleared; every node goes on this one
                    loader.load(session, list(tags), clear_devices=True)
            variables = os.path.join(path, "variables", "variables")
            if os.path.exists(variables + ".index"):
                captured_variables.restore_uninitialized(session, meta_graph, variables)
        graph.finalize()  # nothing may add nodes to a serving graph from here on
    except BaseException:
        session.close()
        raise
    return session


def _array(value) -> np.ndarray:
    """An output as an array. A scalar string comes back as bytes: a 0-d object array, as every
    string tensor is (np.asarray would make it fixed-width bytes, which drop trailing NULs and which
    the V2 JSON encoder refused: 500)."""
    if isinstance(value, np.ndarray):
        return value
    return np.array(value, dtype=object) if isinstance(value, bytes) else np.asarray(value)


class _SessionRunner:
    """Runs one SignatureDef with Session callables, one per (inputs, outputs) combination."""

    def __init__(self, session: tf.compat.v1.Session, signature_def: meta_graph_pb2.SignatureDef):
        self.session = session
        self._inputs = {k: v.name for k, v in signature_def.inputs.items()}
        self._outputs = {k: v.name for k, v in signature_def.outputs.items()}
        self._callables: dict[tuple, Callable] = {}
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray], output_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        input_keys = tuple(sorted(inputs))
        try:
            fn = self._callables.get((input_keys, output_keys)) or self._make(input_keys, output_keys)
            values = fn(*[inputs[k] for k in input_keys])
        except tf.errors.OpError as exc:
            raise from_tensorflow(exc) from None
        return {k: _array(v) for k, v in zip(output_keys, values)}

    def _make(self, input_keys, output_keys):
        options = config_pb2.CallableOptions(
            feed=[self._inputs[k] for k in input_keys],
            fetch=[self._outputs[k] for k in output_keys],
        )
        with self._lock:
            fn = self._callables.get((input_keys, output_keys))
            if fn is None:
                # The C++ Session::MakeCallable API: no Python-side feed checks, one C call a run.
                fn = self.session._make_callable_from_options(options)
                self._callables[(input_keys, output_keys)] = fn
        return fn


# ---------------------------------------------------------------- function runtime


def _load_function(path, meta_graph, tags, devices) -> LoadedModel:
    obj = tf.saved_model.load(path, tags=list(tags))
    keys = [key for key in _servable_keys(meta_graph) if key in obj.signatures]
    per_device = [(device, {key: _FunctionRunner(obj.signatures[key], device) for key in keys}) for device in devices or (None,)]
    holder = {"obj": obj}
    return _placed(per_device, meta_graph, FUNCTION, [holder.clear], path)


class _FunctionRunner:
    """Runs a signature's concrete function (eager call; TF releases the GIL inside),
    on one device when given one."""

    def __init__(self, function, device: str | None):
        self._function = function
        self._device = device

    def __call__(self, inputs: dict[str, np.ndarray], output_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        try:
            if self._device is None:
                result = self._function(**{k: tf.constant(v) for k, v in inputs.items()})
            else:
                with tf.device(self._device):
                    result = self._function(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as exc:
            raise from_tensorflow(exc) from None
        except (TypeError, ValueError) as exc:
            raise invalid_argument(first_line(exc)) from None
        return {k: _array(result[k].numpy()) for k in output_keys}
