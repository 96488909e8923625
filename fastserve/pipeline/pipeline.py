"""The one request pipeline: resolve -> validate -> admit -> queue -> answer, for every API.

A transport hands over the inference calls that arrived together (one wake-up of its
event loop; a lone call is a group of one). Calls for the same version and signature,
of the same kind, asking for the same outputs with inputs of the same dtypes and shapes
form a group: one lookup, one validation and admission, and their rows queued together;
the scheduler batches them (or runs each, for a model without batching) and the answers
are written per call. Every call keeps its own deadline and cancellation: one that dies
while queued is answered at once and its rows are never computed.

Steps, each in one place: resolve (`_resolve`: registry lookup, the call's signature and
inputs), validate and admit (`_start`: the API's checks, names and dtypes, limits,
output keys, deadline), queue (Scheduler.submit), answer (`_answer`, `_deliver`: the
call's encoder, metrics, the request log, its transport's reply).
"""
import asyncio
import functools
import time

import numpy as np
from grpc import StatusCode

from fastserve import limits, metrics
from fastserve.errors import ServingError
from fastserve.logs import request_log
from fastserve.pipeline.call import InferenceCall
from fastserve.pipeline.member import cancelled, expired
from fastserve.servables.registry import Registry, ServableHandle
from fastserve.servables.signature import Signature


class Pipeline:
    def __init__(self, registry: Registry, scheduler, max_tensor_elements: int = 0):
        self._registry = registry
        self._scheduler = scheduler  # batching.scheduler.Scheduler
        self._max_elements = max_tensor_elements

    # ------------------------------------------------------------ entry points

    def submit(self, calls: list[InferenceCall]) -> None:
        """Start calls that arrived together; each is answered through its `reply`."""
        handles: dict[tuple, ServableHandle | ServingError] = {}
        groups: dict[tuple, tuple] = {}
        for call in calls:
            if call.answered:  # its client went away before it was submitted
                continue
            resolved = self._resolve(call, handles)
            if resolved is None:
                continue
            handle, signature = resolved
            shapes = tuple([(name, array.dtype.str, array.shape) for name, array in call.inputs.items()])
            key = (handle.servable, signature.key, type(call), call.output_filter, shapes)
            group = groups.get(key)
            if group is None:
                groups[key] = (handle, signature, [call])
            else:
                group[2].append(call)
        try:
            for handle, signature, group in groups.values():
                self._start(handle, signature, group)
        finally:
            for handle in handles.values():
                if isinstance(handle, ServableHandle):
                    handle.servable.release()  # each queued task holds the version itself

    async def run(self, call: InferenceCall):
        """Serve one call and return its response (raises its error): for services that
        combine several calls' answers (MultiInference)."""
        future = asyncio.get_running_loop().create_future()
        call.reply = functools.partial(_settle, future)
        self.submit([call])
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(call)
            raise

    def cancel(self, call: InferenceCall) -> None:
        """The call's client went away (or its gRPC deadline passed): answer it now (CANCELLED)
        and drop its rows if they have not run."""
        if call.answered:
            return
        call.cancelled = True
        self._deliver(call, cancelled(), None)

    def expire(self, call: InferenceCall) -> None:
        """The call's deadline passed before its answer (REST's rest_api_timeout_in_ms): answer
        it now (DEADLINE_EXCEEDED); its rows are dropped if they have not run."""
        self._deliver(call, expired(), None)

    # ------------------------------------------------------------ steps

    def _resolve(self, call: InferenceCall, handles: dict) -> tuple[ServableHandle, Signature] | None:
        """(version, signature) of a call, its inputs decoded for that signature; None: answered."""
        spec = (call.model, call.version, call.label)
        handle = handles.get(spec)
        try:
            if handle is None:
                try:
                    handle = handles[spec] = self._registry.lookup(*spec)
                except ServingError as exc:
                    handle = handles[spec] = exc
            if isinstance(handle, ServingError):
                raise handle
            signature = call.signature(handle)
            call.inputs = call.inputs_for(signature)
        except ServingError as exc:
            self._deliver(call, exc, None)
            return None
        return handle, signature

    def _start(self, handle: ServableHandle, signature: Signature, calls: list[InferenceCall]) -> None:
        """Validate and admit a group (equal inputs: one check holds for all), then queue it."""
        first = calls[0]
        try:
            first.check(signature, first.inputs)
            signature.validate(first.inputs)
            limits.check_elements(first.inputs, self._max_elements, len(calls))
            output_keys = first.output_keys(signature)
        except ServingError as exc:
            self._fail(calls, exc, handle, signature)
            return
        now = time.monotonic()
        live = [call for call in calls if call.deadline is None or now < call.deadline]
        if len(live) < len(calls):
            self._fail([c for c in calls if c not in live], expired(), handle, signature)
        if live:
            answer = functools.partial(self._answer, handle.servable, signature, time.perf_counter())
            self._scheduler.submit(handle, signature, live, output_keys, answer)

    def _answer(self, servable, signature: Signature, queued: float, calls: list[InferenceCall], outputs: dict | None,
                error: ServingError | None) -> None:
        """The outputs (stacked in call order) or the error of calls that ran, or were dropped, together."""
        handle = ServableHandle(servable)  # names the version in responses; the queue held it until now
        if error is not None:
            self._fail(calls, error, handle, signature)
            return
        try:
            responses = type(calls[0]).encode_group(calls, handle, signature, outputs)
        except ServingError:
            responses = [_encoded(call, handle, signature, _rows(outputs, calls, i)) for i, call in enumerate(calls)]
        ran = time.perf_counter() - queued
        for call, response in zip(calls, responses):
            if isinstance(response, ServingError):
                self._deliver(call, response, None, handle, signature)
            else:
                self._deliver(call, None, response, handle, signature, ran)

    def _fail(self, calls: list[InferenceCall], error: ServingError, handle=None, signature=None) -> None:
        for call in calls:
            self._deliver(call, error, None, handle, signature)

    def _deliver(self, call: InferenceCall, error: ServingError | None, payload, handle: ServableHandle | None = None,
                 signature: Signature | None = None, ran: float = 0.0) -> None:
        """Send one call's answer (once) and count it."""
        if call.answered:
            return
        call.answered = True
        code = StatusCode.OK if error is None else error.code
        if code == StatusCode.CANCELLED and call.deadline is not None and time.monotonic() >= call.deadline:
            code = StatusCode.DEADLINE_EXCEEDED  # gRPC cancels a call whose deadline passed
        if code == StatusCode.DEADLINE_EXCEEDED:
            metrics.rejected("deadline_exceeded")
        if signature is not None:
            series = metrics.model_series(handle.name, handle.version, signature.key, call.api)
            series.count(code)
            if error is None:
                series.ran(ran)
        if call.entrypoint:  # a request of its own (not a part of one, as MultiInference's tasks are)
            model = call.model if self._registry.entry(call.model) is not None else metrics.UNKNOWN_MODEL
            seconds = metrics.request_series(call.entrypoint, call.api, model).done(code, call.started)
            request_log.record(call.entrypoint, call.api, model, code, seconds)
            metrics.IN_FLIGHT.labels(call.entrypoint).dec()  # its transport counted it in
        call.reply(error, payload)


def _encoded(call: InferenceCall, handle, signature, outputs):
    try:
        return call.encode(handle, signature, outputs)
    except ServingError as exc:
        return exc


def _rows(outputs: dict[str, np.ndarray], calls: list[InferenceCall], index: int) -> dict[str, np.ndarray]:
    """The rows of calls[index] in outputs stacked in call order."""
    if len(calls) == 1:
        return outputs
    first = sum(c.rows for c in calls[:index])
    return {k: v[first : first + calls[index].rows] for k, v in outputs.items()}


def _settle(future: asyncio.Future, error: ServingError | None, payload) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(payload)
