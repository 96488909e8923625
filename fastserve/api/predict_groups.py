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
refuses, calls over max_batch_size; with token authentication on, every call. So statuses, error texts and
metrics are the same on both paths.
"""
import functools
import time
from typing import Callable

import numpy as np
from google.protobuf.message import DecodeError
from grpc import StatusCode
from tensorflow_serving.apis import predict_pb2

from fastserve.api.grpc_calls import Method
from fastserve.api.request_groups import GroupSeries, admit, submit
from fastserve.codec import tensor_proto
from fastserve.errors import ServingError
from fastserve.pipeline.member import CANCELLED_MESSAGE, Member, deadline_after
from fastserve.servables.signature import DEFAULT_SIGNATURE

PREDICT = "/tensorflow.serving.PredictionService/Predict"


class PredictGroups:
    """Takes the groupable Predict calls out of a hand-off from the transport and answers them."""

    def __init__(self, service, predict: Method, respond: Callable[[list], None]):
        self._service = service
        self._scheduler = service.executor
        self._auth_required = predict.auth is not None  # with tokens on, every call takes the checked path
        self._respond = respond  # [(call id, status code, message, payload | None)] back to the transport
        self._waiting: dict[int, tuple[Member, GroupSeries]] = {}  # by call id: members not answered yet

    def serve(self, calls: list) -> list:
        """Start every call it can group; returns the others, for the per-call path."""
        if self._auth_required:
            return calls
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

    def cancel(self, call_id: int) -> bool:
        """The client of a grouped call went away (or its deadline passed): answer it now and
        drop its rows if they have not run. False: not a grouped call still waiting."""
        waiting = self._waiting.pop(call_id, None)
        if waiting is None:
            return False
        member, series = waiting
        member.cancelled = True
        expired_ = member.deadline is not None and time.monotonic() >= member.deadline
        series.finish(StatusCode.DEADLINE_EXCEEDED if expired_ else StatusCode.CANCELLED, 1)
        self._respond([(call_id, StatusCode.CANCELLED.value[0], CANCELLED_MESSAGE, None)])
        return True

    def _decode(self, call) -> tuple | None:
        """(group key, inputs) of a Predict call, or None when it is not for a group."""
        try:
            request = predict_pb2.PredictRequest.FromString(call[2])
            inputs = {name: tensor_proto.to_numpy(proto, name) for name, proto in request.inputs.items()}
        except (DecodeError, ServingError):
            return None
        spec = request.model_spec
        shapes = tuple(sorted((name, array.dtype.str, array.shape) for name, array in inputs.items()))
        key = (spec.name, *self._service.version_choice(spec), spec.signature_name or DEFAULT_SIGNATURE,
               tuple(request.output_filter), shapes)
        return key, inputs

    def _submit(self, key: tuple, calls: list, started: float) -> bool:
        """Queue a group's rows; False: leave the whole group to the per-call path."""
        name, version, label, signature_key, output_filter, _ = key
        first = calls[0][1]
        try:
            handle = self._service.registry.lookup(name, version, label)
        except ServingError:
            return False
        with handle:  # each queued task holds the version itself
            signature = handle.model.signatures.get(signature_key)
            admitted = admit(self._scheduler, handle, signature, first, self._service.max_tensor_elements) if signature is not None else None
            if admitted is None:
                return False
            queue, rows = admitted
            try:
                output_keys = signature.output_keys(output_filter)
            except ServingError:
                return False
            spec = predict_pb2.PredictResponse()
            self._service.resolved_spec(handle, signature_key, spec.model_spec)
            series = GroupSeries("GRPC", handle.name, handle.version, signature_key, started, len(calls))
            members = []
            for call, inputs in calls:
                member = Member(inputs, rows, deadline_after(call[4]), call[0])
                self._waiting[call[0]] = (member, series)
                members.append(member)
            submit(queue, members, output_keys, functools.partial(self._answer, rows, spec.SerializeToString(), series))
        return True

    def _answer(self, rows: int, spec: bytes, series: GroupSeries, members: list[Member], outputs: dict | None,
                error: ServingError | None) -> None:
        ids = [m.reply_to for m in members if self._waiting.pop(m.reply_to, None) is not None]
        if len(ids) < len(members):  # some were answered when their client went away
            if error is None:
                outputs = _rows_of_members(outputs, members, lambda m: not m.cancelled)
            members = [m for m in members if not m.cancelled]
        if not ids:
            return
        if error is not None:
            self._respond([(call_id, error.code.value[0], error.message, None) for call_id in ids])
            series.finish(error.code, len(ids))
            return
        payloads = _responses(outputs, rows, len(ids), spec)
        self._respond([(call_id, 0, "", payload) for call_id, payload in zip(ids, payloads)])
        series.finish(StatusCode.OK, len(ids))


def _rows_of_members(outputs: dict[str, np.ndarray], members: list[Member], keep) -> dict[str, np.ndarray]:
    """The outputs of the members `keep` says, stacked (the others' rows left out)."""
    index = np.concatenate([np.arange(first, first + m.rows) for first, m in zip(_firsts(members), members) if keep(m)])
    return {k: v[index] for k, v in outputs.items()}


def _firsts(members: list[Member]):
    first = 0
    for member in members:
        yield first
        first += member.rows


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
