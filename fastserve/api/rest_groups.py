"""REST predict requests served a group at a time: the REST frontend's fast path.

A request to /v1/models/NAME[/versions/V|/labels/L]:predict for a batched model is
decoded as it arrives and waits for the end of the event-loop iteration; then the
requests for the same version and signature whose inputs have the same dtypes and shapes
are queued together (request_groups.submit). Each request gets a future the HTTP
connection writes from when it resolves: no asyncio task, lookup or queue task of its own.

A request the group path cannot take whole goes to the per-request path (RestApi), which
answers it as always: a body that does not parse, an unknown model, version, label or
signature, a model without batching, inputs the signature refuses, rows over
max_batch_size. Statuses, error texts and metrics are the same on both paths.
"""
import asyncio
import functools
import time
from dataclasses import dataclass, field

from grpc import StatusCode
from tensorflow_serving.apis import model_pb2

from fastserve import limits
from fastserve.api.http import Response
from fastserve.api.request_groups import GroupSeries, admit, submit
from fastserve.batching.scheduler import BatchQueue
from fastserve.codec import json_tensor
from fastserve.errors import HTTP_STATUS, ServingError
from fastserve.pipeline.member import Member, deadline_after
from fastserve.servables.registry import ServableHandle
from fastserve.servables.signature import DEFAULT_SIGNATURE, Signature


@dataclass
class _Group:
    queue: BatchQueue
    signature: Signature
    started: float
    handles: list[ServableHandle] = field(default_factory=list)  # released once the rows are queued
    members: list[Member] = field(default_factory=list)  # reply_to: (future of the response, row format)
    waiting: int = 0  # futures not resolved yet
    timer: asyncio.TimerHandle | None = None  # rest_api_timeout_in_ms


class RestGroups:
    def __init__(self, service, timeout: float | None, error_response):
        self._service = service
        self._scheduler = service.executor
        self._timeout = timeout  # rest_api_timeout_in_ms, in seconds; None: no deadline
        self._error_response = error_response
        self._pending: dict[tuple, _Group] = {}

    def predict(self, spec: model_pb2.ModelSpec, body: bytes) -> asyncio.Future | None:
        """A future of the response, or None: serve this request on the per-request path."""
        if not self._scheduler.batches(spec.name):
            return None  # before parsing: the per-request path parses this body once
        started = time.perf_counter()
        try:
            request = json_tensor.PredictBody(body)
            key = request.signature_name or DEFAULT_SIGNATURE
            handle = self._service.lookup(spec)
        except ServingError:
            return None
        admitted = self._admit(handle, key, request)
        if admitted is None:
            handle.servable.release()
            return None
        signature, queue, inputs, row_format, rows = admitted
        shapes = tuple(sorted((k, a.dtype.str, a.shape) for k, a in inputs.items()))
        group_key = (handle.servable, signature.key, shapes)
        group = self._pending.get(group_key)
        if group is None:
            if not self._pending:
                asyncio.get_running_loop().call_soon(self._flush)
            group = self._pending[group_key] = _Group(queue, signature, started)
        future = asyncio.get_running_loop().create_future()
        group.handles.append(handle)
        group.members.append(Member(inputs, rows, deadline_after(self._timeout), (future, row_format)))
        return future

    def _admit(self, handle: ServableHandle, key: str, request: json_tensor.PredictBody) -> tuple | None:
        """(signature, queue, inputs, row format, rows) of a request a group can take, else None."""
        signature = handle.model.signatures.get(key)
        if signature is None:
            return None
        try:
            inputs, row_format = request.decode(signature.input_dtypes)
        except ServingError:
            return None
        admitted = admit(self._scheduler, handle, signature, inputs, self._service.max_tensor_elements)
        return None if admitted is None else (signature, admitted[0], inputs, row_format, admitted[1])

    def _flush(self) -> None:
        """Queue this loop iteration's groups."""
        pending, self._pending = self._pending, {}
        loop = asyncio.get_running_loop()
        for group in pending.values():
            servable = group.handles[0].servable
            series = GroupSeries("REST", servable.name, servable.version, group.signature.key, group.started, len(group.members))
            group.waiting = len(group.members)
            if self._timeout is not None:
                group.timer = loop.call_later(self._timeout, self._expire, group, series)
            for member in group.members:  # a client that goes away cancels its response
                member.reply_to[0].add_done_callback(functools.partial(self._gone, group, series, member))
            submit(group.queue, group.members, group.signature.all_output_keys, functools.partial(self._answer, group, series))
            for handle in group.handles:  # each queued task holds the version itself
                handle.servable.release()

    def _answer(self, group: _Group, series: GroupSeries, members: list[Member], outputs: dict | None, error: ServingError | None) -> None:
        codes: dict[StatusCode, int] = {}
        first = 0
        for member in members:
            future, row_format = member.reply_to
            own_rows, first = slice(first, first + member.rows), first + member.rows
            if future.done():  # answered already: its deadline passed, or its client went away
                continue
            if error is None:
                try:
                    own = {k: v[own_rows] for k, v in outputs.items()}
                    response = Response(200, json_tensor.encode_response(own, row_format))
                    code = StatusCode.OK
                except ServingError as exc:
                    response, code = self._error_response(exc.http_status, exc.message), exc.code
            elif error.code == StatusCode.DEADLINE_EXCEEDED:  # dropped when its batch formed: the REST deadline's words
                response, code = self._error_response(error.http_status, limits.rest_timeout_message(self._timeout)), error.code
            else:
                response, code = self._error_response(error.http_status, error.message), error.code
            future.set_result(response)
            codes[code] = codes.get(code, 0) + 1
        for code, count in codes.items():
            series.finish(code, count)
        self._answered(group, sum(codes.values()))

    def _expire(self, group: _Group, series: GroupSeries) -> None:
        """rest_api_timeout_in_ms has passed: answer what is still waiting, as the per-request path does."""
        late = [m.reply_to[0] for m in group.members if not m.reply_to[0].done()]
        for future in late:
            future.set_result(self._error_response(HTTP_STATUS[StatusCode.DEADLINE_EXCEEDED], limits.rest_timeout_message(self._timeout)))
        if late:
            series.finish(StatusCode.DEADLINE_EXCEEDED, len(late))
            self._answered(group, len(late))

    def _gone(self, group: _Group, series: GroupSeries, member: Member, future: asyncio.Future) -> None:
        if future.cancelled():  # the connection closed before its answer: drop its rows if not run
            member.cancelled = True
            series.finish(StatusCode.CANCELLED, 1)
            self._answered(group, 1)

    @staticmethod
    def _answered(group: _Group, count: int) -> None:
        group.waiting -= count
        if not group.waiting and group.timer is not None:
            group.timer.cancel()  # it would keep the group's inputs alive until it fired
