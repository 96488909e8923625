"""Warm-up and the check: run requests through a new version before it serves.

Warm-up is TF Serving's: `assets.extra/tf_serving_warmup_requests` in the version dir,
a TFRecord file of PredictionLog records (at most 1000), each replayed
`num_request_iterations` times; Predict, Classify, Regress and MultiInference records
are replayed. The check is fastserve's: every servable signature the warm-up did not
run is run once on a synthetic request built from its specs (batch 1, unknown dims 1;
zeros, empty strings, False), so that no version serves that cannot answer. A
signature whose inputs the check cannot make up (a serialized tf.Example parsed by the
model, an image decoded from bytes: TensorFlow answers INVALID_ARGUMENT) is skipped
with the reason; any other failure fails the load. Both run on every instance.
"""
import logging
import os
from collections.abc import Set

import numpy as np
import tensorflow as tf
from grpc import StatusCode
from tensorflow_serving.apis import prediction_log_pb2

from fastserve.codec import tensor_proto
from fastserve.codec.examples import serialized_examples
from fastserve.errors import ServingError
from fastserve.servables.example_signatures import CLASSIFY_METHOD, INPUTS, classification_outputs, regression_outputs
from fastserve.servables.saved_model import LoadedModel, first_line
from fastserve.servables.signature import DEFAULT_SIGNATURE, Signature
from fastserve_client import dtypes

log = logging.getLogger(__name__)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000


class WarmupError(Exception):
    """Warm-up or the check failed; the version does not become available."""

    def __init__(self, message: str, code: StatusCode = StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.code = code


def replay(model: LoadedModel, iterations: int = 1) -> tuple[int, set[str]]:
    """Replay the version's warm-up file, if it has one, on every instance; returns how
    many requests ran and the keys of the signatures they ran."""
    path = os.path.join(model.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0, set()
    count, ran = 0, set[str]()
    for device in model.devices:
        n, keys = _replay(model, device, path, max(1, iterations))
        count, ran = count + n, ran | keys
    return count, ran


def check(model: LoadedModel, done: Set[str] = frozenset()) -> dict[str, str]:
    """Run every servable signature not in `done` once on a synthetic request, on every
    instance. Returns {key: why} for those it skipped; raises WarmupError if one fails."""
    skipped = {}
    for key, signature in sorted(model.signatures.items()):
        if key in done:
            continue
        try:
            inputs = {name: synthetic_input(spec.dtype, spec.shape) for name, spec in signature.inputs.items()}
        except ValueError as exc:
            skipped[key] = str(exc)
            continue
        for device in model.devices:
            placed = signature.on(device)
            try:
                placed.validate(inputs)
                placed.run(inputs, placed.all_output_keys)
            except ServingError as exc:
                if exc.code != StatusCode.INVALID_ARGUMENT:
                    where = f" on {device}" if device else ""
                    raise WarmupError(
                        f"signature {key} cannot answer a synthetic request ({model.runtime} runtime{where}): {first_line(exc)}", exc.code
                    ) from None
                skipped[key] = f"the model refuses a synthetic input: {first_line(exc)}"
                break
    return skipped


def synthetic_input(dtype: int, shape) -> np.ndarray:
    """Zeros (empty strings, False) of the spec's shape, 1 for each unknown dim (batch 1)."""
    dims = [1 if d is None or d < 0 else d for d in (shape if shape is not None else (1,))]
    dt = dtypes.from_enum(dtype)
    if dt.numpy == object:
        array = np.empty(dims, dtype=object)
        array.fill(b"")
        return array
    return np.zeros(dims, dtype=dt.numpy)


def _replay(model: LoadedModel, device, path: str, iterations: int) -> tuple[int, set[str]]:
    count, ran = 0, set[str]()
    try:
        for number, record in enumerate(tf.compat.v1.io.tf_record_iterator(path)):
            if number >= MAX_RECORDS:
                raise WarmupError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
            entry = prediction_log_pb2.PredictionLog()
            try:
                entry.ParseFromString(record)
            except Exception:  # noqa: BLE001 - protobuf raises DecodeError
                raise WarmupError(f"Failed to parse warmup record {number} from {path}") from None
            for _ in range(iterations):
                ran |= _run_log(model, device, entry)
                count += 1
    except tf.errors.DataLossError as exc:
        raise WarmupError(f"{exc.message}. Please verify your warmup data is in TFRecord format.") from None
    return count, ran


def _run_log(model: LoadedModel, device, entry: prediction_log_pb2.PredictionLog) -> set[str]:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        inputs = {name: tensor_proto.to_numpy(proto, name) for name, proto in request.inputs.items()}
        signature = _signature(model, device, request.model_spec.signature_name)
        _run(signature, inputs, request.output_filter)
        return {signature.key}
    if kind in ("classify_log", "regress_log"):
        request = getattr(entry, kind).request
        return {_run_examples(model, device, request.model_spec.signature_name, kind == "classify_log", request.input)}
    if kind == "multi_inference_log":
        request = entry.multi_inference_log.request
        return {
            _run_examples(model, device, task.model_spec.signature_name, task.method_name == CLASSIFY_METHOD, request.input)
            for task in request.tasks
        }
    raise WarmupError(f"warm-up records of type {kind} are not supported")


def _signature(model: LoadedModel, device, key: str) -> Signature:
    key = key or DEFAULT_SIGNATURE
    signature = model.signatures.get(key)
    if signature is None:
        raise WarmupError(f'warm-up request names signature "{key}", which the model does not have')
    return signature.on(device)


def _run_examples(model: LoadedModel, device, key: str, classify: bool, request_input) -> str:
    signature = _signature(model, device, key)
    try:
        outputs = classification_outputs(signature) if classify else regression_outputs(signature)
        examples = serialized_examples(request_input)
    except ServingError as exc:
        raise WarmupError(f"warm-up of signature {signature.key} failed: {exc.message}") from None
    _run(signature, {INPUTS: examples}, outputs)
    return signature.key


def _run(signature: Signature, inputs, output_filter) -> None:
    try:
        signature.validate(inputs)
        signature.run(inputs, signature.output_keys(output_filter))
    except ServingError as exc:
        raise WarmupError(f"warm-up of signature {signature.key} failed: {exc.message}") from None
