"""The one request pipeline: resolve -> validate -> admit -> queue -> answer, for every API.

A transport hands over the inference calls that arrived together (one wake-up of its
event loop; a lone call is a group of one). Calls for the same version and signature,
of the same kind and priority, asking for the same outputs with inputs of the same dtypes
and shapes form a group: one lookup, one validation and admission, and their rows queued together;
the scheduler batches them (or runs each, for a model without batching) and the answers
are written per call. Every call keeps its own deadline and cancellation: one that dies
while queued is answered at once and its rows are never computed.

Steps, each in one place: resolve (`submit`: registry lookup, the call's signature and
inputs), validate and admit (`_start`: the API's checks, names and dtypes, limits,
output keys, deadline), queue (Scheduler.submit), answer (`_answer`, `_finish`: the
call's encoder, metrics, the request log, its transport's reply).
"""
import asyncio
import functools
import logging
import time
from concurrent.futures import Future
from collections.abc import Callable

import numpy as np
from grpc import StatusCode

from fastserve import limits, metrics, statistics, tracing
from fastserve.errors import ServingError, internal
from fastserve.logs import request_log
from fastserve.pipeline.cache import ResponseCache, ResponseCaches
from fastserve.pipeline.call import InferenceCall
from fastserve.pipeline.member import cancelled, expired
from fastserve.servables.registry import Registry, ServableHandle
from fastserve.servables.signature import DEFAULT_SIGNATURE, Signature

log = logging.getLogger(__name__)

class Pipeline:
    def __init__(self, registry: Registry, scheduler, max_tensor_elements: int = 0, caches: ResponseCaches | None = None,
                 load_on_demand: Callable[[str], Future | None] = lambda name: None, load_timeout: float = 60.0):
        self._registry = registry
        self._scheduler = scheduler  # batching.scheduler.Scheduler
        self._max_elements = max_tensor_elements
        self._caches = caches or ResponseCaches()
        self._load_on_demand = load_on_demand  # the manager's: the load an unloaded on-demand model's requests wait for
        self._load_timeout = load_timeout  # seconds (server.on_demand_load_timeout_ms)

    # ------------------------------------------------------------ entry points

    def submit(self, calls: list[InferenceCall], load: bool = True) -> None:
        """Start calls that arrived together; each is answered through its `reply`. Calls for an
        on-demand model that is not loaded wait for its load (unless `load` is False)."""
        handles: dict[tuple, ServableHandle | ServingError | Future] = {}
        groups: dict[tuple, tuple] = {}
        waiting: dict[Future, list[InferenceCall]] = {}
        for call in calls:
            if call.answered:  # its client went away before it was submitted
                continue
            # resolve: the version, the call's signature, its inputs decoded for that signature
            spec = (call.model, call.version, call.label)
            handle = handles.get(spec)
            try:
                if handle is None:
                    handle = handles[spec] = self._resolve(spec, load)
                if isinstance(handle, Future):
                    waiting.setdefault(handle, []).append(call)
                    continue
                if isinstance(handle, ServingError):
                    raise handle
                signature = call.signature(handle)
                call.inputs = call.inputs_for(signature, self._max_elements)
            except Exception as exc:  # noqa: BLE001 - whatever a request does, it fails alone
                self._finish([call], _as_serving_error(exc))
                continue
            shapes = tuple([(name, array.dtype, array.shape) for name, array in call.inputs.items()])
            key = (handle.servable, signature.key, call.__class__, call.output_filter, shapes, call.priority)
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
        for loading, waiters in waiting.items():
            self._wait_for_load(loading, waiters)

    def refused_on_arrival(self, model: str, version: int | None, label: str | None, api: str, priority: int, *,
                           ahead: int, started: float) -> ServingError | None:
        """The refusal of a request for the default signature of a model version whose queue at
        `priority` is full, counting `ahead` requests for it that arrived before and are not
        queued yet as a row each, decided before the request is decoded (counted here as the
        pipeline counts a refusal; the transport counts the request), or None: decode and submit
        it. Never where a response cache could answer it from outside the queue."""
        try:
            handle = self._registry.lookup(model, version, label)
        except ServingError:
            return None  # the request's own error, or an on-demand model: the full path says
        try:
            signature = handle.model.signatures.get(DEFAULT_SIGNATURE)
            if signature is None or self._caches.get(handle.name) is not None:
                return None
            error = self._scheduler.refusal_on_arrival(handle, signature, priority, ahead)
            if error is not None:
                metrics.model_series(handle.name, handle.version, signature.key, api).count(error.code, 1)
                statistics.requests_done(handle.name, handle.version, [], [time.perf_counter() - started], 0)
            return error
        finally:
            handle.servable.release()

    def _resolve(self, spec: tuple, load: bool) -> ServableHandle | ServingError | Future:
        """The version a spec names, the error that answers it, or the load of its on-demand model."""
        try:
            handle = self._registry.lookup(*spec)
        except ServingError as exc:
            pending = self._load_on_demand(spec[0]) if load and exc.code == StatusCode.NOT_FOUND else None
            return exc if pending is None else pending
        if load and handle.servable.on_demand:  # (not when it waited for the load)
            metrics.on_demand_hit(handle.name)
        return handle

    def _wait_for_load(self, load: Future, calls: list[InferenceCall]) -> None:
        """Submit the calls again once their model has loaded (answer them with its error if it
        cannot), or answer them UNAVAILABLE after server.on_demand_load_timeout_ms."""
        loop = asyncio.get_running_loop()
        waited_from = time.perf_counter()
        timer = loop.call_later(self._load_timeout, self._load_timed_out, calls)

        def loaded() -> None:
            timer.cancel()
            metrics.cold_start(calls[0].model, time.perf_counter() - waited_from)
            error = load.exception()
            if error is None:
                self.submit(calls, load=False)
            else:
                self._finish(calls, _as_serving_error(error))

        def done(_) -> None:  # on a load thread
            try:
                loop.call_soon_threadsafe(loaded)
            except RuntimeError:  # that loop has closed: nobody is waiting
                pass

        load.add_done_callback(done)

    def _load_timed_out(self, calls: list[InferenceCall]) -> None:
        error = ServingError(StatusCode.UNAVAILABLE, f"model {calls[0].model} is still loading after {self._load_timeout:g}s "
                                                     "(server.on_demand_load_timeout_ms); retry later")
        self._finish(calls, error)

    async def run(self, call: InferenceCall):
        """Serve one call and return its response (raises its error): for services that
        combine several calls' answers (MultiInference)."""
        future = asyncio.get_running_loop().create_future()
        call.reply, call.reply_to = _settle, future
        call.started = time.perf_counter()
        self.submit([call])
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(call)
            raise

    def cancel(self, call: InferenceCall) -> None:
        """The call's client went away (or its gRPC deadline passed): answer it now (CANCELLED)
        and drop its rows if they have not run."""
        call.cancelled = True
        self._finish([call], cancelled())

    def expire(self, call: InferenceCall) -> None:
        """The call's deadline passed before its answer (REST's rest_api_timeout_in_ms): answer
        it now (DEADLINE_EXCEEDED); its rows are dropped if they have not run."""
        self._finish([call], expired())

    # ------------------------------------------------------------ steps

    def _start(self, handle: ServableHandle, signature: Signature, calls: list[InferenceCall]) -> None:
        """Validate and admit a group (equal inputs: one check holds for all), then queue it."""
        first = calls[0]
        try:
            first.check(signature, first.inputs)
            signature.validate(first.inputs)
            limits.check_elements(first.inputs, self._max_elements, len(calls))
            output_keys = first.output_keys(signature)
        except Exception as exc:  # noqa: BLE001 - any failure fails these calls alone
            self._finish(calls, _as_serving_error(exc), handle, signature)
            return
        now = time.monotonic()
        live = [call for call in calls if call.deadline is None or now < call.deadline]
        if len(live) < len(calls):
            self._finish([c for c in calls if c not in live], expired(), handle, signature)
        cache = self._caches.get(handle.name)
        if cache is not None:
            live = self._answer_from_cache(cache, handle, signature, live, output_keys)
        if live:
            queued = time.perf_counter()
            statistics.decoded(handle.name, handle.version, [queued - call.started for call in live])
            answer = functools.partial(self._answer, handle.servable, signature, queued)
            self._scheduler.submit(handle, signature, live, output_keys, answer)

    def _answer_from_cache(self, cache: ResponseCache, handle: ServableHandle, signature: Signature, calls: list[InferenceCall],
                           output_keys: tuple[str, ...]) -> list[InferenceCall]:
        """Answer the calls whose outputs the cache holds; the others, each with its cache key, go on."""
        missed = []
        for call in calls:
            call.cache_key = cache.key(handle.version, signature.key, output_keys, call.inputs)
            outputs = cache.get(call.cache_key)
            if outputs is None:
                missed.append(call)
            else:
                self._finish([call], None, handle, signature, [_encoded(call, handle, signature, outputs)])
        return missed

    def _answer(self, servable, signature: Signature, queued: float, calls: list[InferenceCall], outputs: dict | None,
                error: ServingError | None) -> None:
        """The outputs (stacked in call order) or the error of calls that ran, or were dropped, together."""
        handle = ServableHandle(servable)  # names the version in responses; the queue held it until now
        if error is not None:
            self._finish(calls, error, handle, signature)
            return
        assert outputs is not None  # no error: the outputs
        cache = self._caches.get(handle.name) if calls[0].cache_key is not None else None
        if cache is not None:  # (unless a reload removed it meanwhile)
            for i, call in enumerate(calls):
                assert call.cache_key is not None  # the group's calls agree on caching
                cache.put(call.cache_key, _rows(outputs, calls, i))
        encoding = time.perf_counter()
        try:
            responses = type(calls[0]).encode_group(calls, handle, signature, outputs)
        except Exception:  # noqa: BLE001 - then each call on its own: one bad answer fails only its call
            responses = [_encoded(call, handle, signature, _rows(outputs, calls, i)) for i, call in enumerate(calls)]
        encoded = time.perf_counter()
        statistics.encoded(handle.name, handle.version, encoded - encoding)
        self._finish(calls, None, handle, signature, responses, encoded - queued)

    def _finish(self, calls: list[InferenceCall], error: ServingError | None, handle: ServableHandle | None = None,
                signature: Signature | None = None, responses: list | None = None, ran: float = 0.0) -> None:
        """Send the answers of calls of one group (the error, or each one's response: a
        ServingError where its encoding failed), each once, and count them."""
        first = calls[0]
        model_series = (metrics.model_series(handle.name, handle.version, signature.key, first.api)
                        if handle is not None and signature is not None else None)
        if first.entrypoint:  # a request of its own (not a part of one)
            model = first.model if self._registry.entry(first.model) is not None else metrics.UNKNOWN_MODEL
            request_series = metrics.request_series(first.entrypoint, first.api, model)
        now, finished = time.monotonic(), time.perf_counter()
        counts: dict[StatusCode, int] = {}
        ok_seconds, failed_seconds, ok_rows = [], [], 0
        sampled = first.entrypoint and request_log.sample_rate
        for i, call in enumerate(calls):
            if call.answered:
                continue
            call.answered = True
            own_error, payload = error, None
            if responses is not None:
                payload = responses[i]
                if isinstance(payload, ServingError):
                    own_error, payload = payload, None
            code = StatusCode.OK if own_error is None else own_error.code
            if code is StatusCode.CANCELLED and call.deadline is not None and now >= call.deadline:
                code = StatusCode.DEADLINE_EXCEEDED  # gRPC cancels a call whose deadline passed
            counts[code] = counts.get(code, 0) + 1
            if code is StatusCode.OK:
                ok_seconds.append(finished - call.started)
                ok_rows += call.rows or 1
            else:
                failed_seconds.append(finished - call.started)
            if call.trace is not None:
                tracing.end_request(call, code.name, handle.version if handle is not None else None)
            if first.entrypoint:
                seconds = request_series.observe(call.started)
                if sampled:
                    request_log.record(first.entrypoint, first.api, model, code, seconds)
            try:
                call.reply(call, own_error, payload)
            except Exception:  # noqa: BLE001 - one transport's failure must not keep the others' answers
                log.exception("answering a %s call failed", first.entrypoint or "MultiInference")
        for code, count in counts.items():
            if code == StatusCode.DEADLINE_EXCEEDED:
                metrics.rejected("deadline_exceeded", count)
            if model_series is not None:
                model_series.count(code, count)
                if code == StatusCode.OK:
                    model_series.ran(ran, count)
            if first.entrypoint:
                request_series.count(code, count)
        if first.entrypoint and counts:
            metrics.in_flight(first.entrypoint).dec(sum(counts.values()))  # its transport counted them in
        if handle is not None and counts:
            statistics.requests_done(handle.name, handle.version, ok_seconds, failed_seconds, ok_rows)


def _encoded(call: InferenceCall, handle, signature, outputs):
    try:
        return call.encode(handle, signature, outputs)
    except Exception as exc:  # noqa: BLE001 - an answer that cannot be encoded fails its call alone
        return _as_serving_error(exc)


def _as_serving_error(exc: BaseException) -> ServingError:
    """A request's own error as it is, anything unexpected as INTERNAL (and logged): either way
    it answers that request alone."""
    if isinstance(exc, ServingError):
        return exc
    log.error("unexpected error serving a request", exc_info=exc)
    return internal(exc)


def _rows(outputs: dict[str, np.ndarray], calls: list[InferenceCall], index: int) -> dict[str, np.ndarray]:
    """The rows of calls[index] in outputs stacked in call order."""
    if len(calls) == 1:
        return outputs
    first = sum(c.rows for c in calls[:index])
    return {k: v[first : first + calls[index].rows] for k, v in outputs.items()}


def _settle(call: InferenceCall, error: ServingError | None, payload) -> None:
    future = call.reply_to
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(payload)
