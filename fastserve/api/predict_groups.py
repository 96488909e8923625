"""Predict calls served a group at a time: the native gRPC transport's fast path.

The native transport hands Python every call that arrived since its last wake-up. The
Predict calls among them for a batched model that name the same model version,
signature and output filter and send inputs of the same dtypes and shapes form a group:
one lookup, one validation, one task holding all their rows for the model's batch queue
and one future, where the per-call path spends an asyncio task, a lookup, a queue task
and a future on every call. When the batch has run, its outputs are cut back into one
response per call: each output's serialized bytes up to its tensor content are the same
for every call of the group, so a response is a join of those prefixes and the call's
slice of each output buffer.

Whatever a group cannot take whole goes back to the per-call path (grpc_calls.Method),
which answers it as it always does: other methods, models without batching, requests
that do not parse, unknown models, versions, labels or signatures, inputs the signature
refuses, calls over max_batch_size, failed authentication. So statuses, error texts and
metrics are the same on both paths.
"""
import functools
import time
from typing import Callable

import numpy as np
from google.protobuf.message import DecodeError
from grpc import StatusCode
from tensorflow_serving.apis import predict_pb2

from fastserve import limits, metrics
from fastserve.api.grpc_calls import Method, authorization
from fastserve.codec import tensor_proto
from fastserve.errors import ServingError
from fastserve.logs import request_log
from fastserve.servables.signature import DEFAULT_SIGNATURE

PREDICT = "/tensorflow.serving.PredictionService/Predict"
_IN_FLIGHT = metrics.IN_FLIGHT.labels("GRPC")


class PredictGroups:
    """Takes the groupable Predict calls out of a hand-off from the transport and answers them."""

    def __init__(self, service, predict: Method, respond: Callable[[list], None]):
        self._service = service
        self._scheduler = service.executor
        self._auth = predict.auth
        self._respond = respond  # [(call id, status code, message, payload | None)] back to the transport

    def serve(self, calls: list) -> list:
        """Start every call it can group; returns the others, for the per-call path."""
        started = time.perf_counter()
        groups: dict[tuple, list] = {}
        others = []
        for call in calls:
            decoded = self._decode(call) if call[1] == PREDICT else None
            if decoded is None:
                others.append(call)
            else:
                key, inputs = decoded
                groups.setdefault(key, []).append((call, inputs))
        for key, members in groups.items():
            if not self._submit(key, members, started):
                others.extend(call for call, _ in members)
        return others

    def _decode(self, call) -> tuple | None:
        """(group key, inputs) of a Predict call, or None when it is not for a group."""
        _, _, payload, metadata, _ = call
        try:
            if self._auth is not None:
                self._auth.check(authorization(metadata), False)
            request = predict_pb2.PredictRequest.FromString(payload)
            inputs = {name: tensor_proto.to_numpy(proto, name) for name, proto in request.inputs.items()}
        except (DecodeError, ServingError):
            return None
        spec = request.model_spec
        choice = spec.WhichOneof("version_choice")
        version = spec.version.value if choice == "version" else spec.version_label if choice == "version_label" else None
        shapes = tuple(sorted((name, array.dtype.str, array.shape) for name, array in inputs.items()))
        key = (spec.name, choice, version, spec.signature_name or DEFAULT_SIGNATURE, tuple(request.output_filter), shapes)
        return key, inputs

    def _submit(self, key: tuple, members: list, started: float) -> bool:
        """Queue a group's rows, max_batch_size at most per task; False: leave it to the per-call path."""
        name, choice, version, signature_key, output_filter, _ = key
        first = members[0][1]
        try:
            handle = self._service.registry.lookup(
                name, version if choice == "version" else None, version if choice == "version_label" else None)
        except ServingError:
            return False
        with handle:  # each queued task holds the version itself
            signature = handle.model.signatures.get(signature_key)
            queue = self._scheduler.batch_queue(handle, signature) if signature is not None else None
            rows = _rows(first)
            if queue is None or not rows or rows > queue.config.max_batch_size:
                return False
            try:
                signature.validate(first)
                limits.check_elements(first, self._service.max_tensor_elements)
                output_keys = signature.output_keys(output_filter)
            except ServingError:
                return False
            spec = predict_pb2.PredictResponse()
            self._service.resolved_spec(handle, signature_key, spec.model_spec)
            answer = _Answer(self._respond, handle.name, handle.version, signature_key, rows, spec.SerializeToString(), started)
            per_task = queue.config.max_batch_size // rows
            for at in range(0, len(members), per_task):
                chunk = [call[0] for call, _ in members[at : at + per_task]]
                arrays = [inputs for _, inputs in members[at : at + per_task]]
                inputs = {k: np.concatenate([a[k] for a in arrays]) if len(arrays) > 1 else arrays[0][k] for k in first}
                _IN_FLIGHT.inc(len(chunk))
                try:
                    future = queue.submit(inputs, rows * len(chunk), output_keys, len(chunk))
                except ServingError as exc:  # queue full: the same answer the per-call path gives
                    answer.fail(chunk, exc.code, exc.message)
                    continue
                future.add_done_callback(functools.partial(answer, chunk))
        return True


def _rows(inputs: dict[str, np.ndarray]) -> int:
    """The batch size the inputs agree on; 0 when they have none (the per-call path explains why)."""
    sizes = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    return sizes.pop() if len(sizes) == 1 and -1 not in sizes else 0


class _Answer:
    """Answers the chunks of one group once their batches have run."""

    def __init__(self, respond, model: str, version: int, signature: str, rows: int, spec: bytes, started: float):
        self._respond = respond
        self._model = model
        self._series = metrics.model_series(model, version, signature, "Predict")
        self._rows = rows
        self._spec = spec
        self._started = started

    def __call__(self, chunk: list[int], future) -> None:
        if future.cancelled():
            self.fail(chunk, StatusCode.CANCELLED, "Cancelled")
            return
        error = future.exception()
        if error is not None:
            code, message = (error.code, error.message) if isinstance(error, ServingError) else (
                StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")
            self.fail(chunk, code, message)
            return
        payloads = _responses(future.result(), self._rows, len(chunk), self._spec)
        self._respond([(call_id, 0, "", payload) for call_id, payload in zip(chunk, payloads)])
        self._series.count(StatusCode.OK, len(chunk))
        self._series.ran(time.perf_counter() - self._started, len(chunk))
        self._finish(chunk, StatusCode.OK)

    def fail(self, chunk: list[int], code: StatusCode, message: str) -> None:
        self._respond([(call_id, code.value[0], message, None) for call_id in chunk])
        self._series.count(code, len(chunk))
        self._finish(chunk, code)

    def _finish(self, chunk: list[int], code: StatusCode) -> None:
        _IN_FLIGHT.dec(len(chunk))
        seconds = metrics.request_series("GRPC", "Predict", self._model).done(code, self._started, len(chunk))
        for _ in chunk:
            request_log.record("GRPC", "Predict", self._model, code, seconds)


def _responses(outputs: dict[str, np.ndarray], rows: int, calls: int, spec: bytes) -> list[bytes]:
    """One serialized PredictResponse per call, each with its `rows` rows of every output."""
    if any(array.dtype.hasobject for array in outputs.values()):  # strings: no fixed-size content to slice
        return [_response(outputs, i * rows, (i + 1) * rows, spec) for i in range(calls)]
    pieces = []  # per output: (serialized entry up to the content, the whole output's bytes, bytes per call)
    for key, array in outputs.items():
        array = np.ascontiguousarray(array)
        entry = predict_pb2.PredictResponse()
        tensor_proto.from_numpy(array[:rows], entry.outputs[key])
        serialized, content = entry.SerializeToString(), entry.outputs[key].tensor_content
        if not serialized.endswith(content):  # the content is not last: encode each call whole
            return [_response(outputs, i * rows, (i + 1) * rows, spec) for i in range(calls)]
        pieces.append((serialized[: len(serialized) - len(content)], memoryview(array.reshape(-1).view(np.uint8)), len(content)))
    out = []
    for i in range(calls):
        parts = []
        for prefix, data, size in pieces:
            parts.append(prefix)
            parts.append(data[i * size : (i + 1) * size])
        parts.append(spec)
        out.append(b"".join(parts))
    return out


def _response(outputs: dict[str, np.ndarray], start: int, stop: int, spec: bytes) -> bytes:
    response = predict_pb2.PredictResponse()
    for key, array in outputs.items():
        tensor_proto.from_numpy(array[start:stop], response.outputs[key])
    return response.SerializeToString() + spec
