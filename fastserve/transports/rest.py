"""The REST app: HTTP requests to the services' REST routes (/v1: TF Serving, /v2: V2).

Per request: authentication, the deadline (rest_api_timeout_in_ms), metrics and the
request log, and errors as {"error": "..."} with the HTTP status of their canonical
code (errors.py). A route gives an inference call or a coroutine. Inference calls that
arrive in one event-loop iteration go to the pipeline together (so those that agree
are served as groups); each one's answer resolves the future the HTTP connection writes
from, and one timer per iteration answers them 504 when their deadline passes. A
connection that closes cancels its requests (the HTTP server tells `gone`): an inference
call is dropped from its batch, a coroutine cancelled.
"""
import asyncio
import logging
import time
from collections.abc import Awaitable

import orjson
from grpc import StatusCode

from fastserve import limits, metrics, tracing
from fastserve.auth import TokenAuth
from fastserve.config import METRICS_PATH
from fastserve.errors import HTTP_STATUS, ServingError, internal
from fastserve.logs import request_log
from fastserve.pipeline.call import PREDICT, InferenceCall
from fastserve.pipeline.member import PRIORITY_KEY, deadline_after, priority_level
from fastserve.pipeline.pipeline import Pipeline
from fastserve.servables.registry import Registry
from fastserve.services.rest_messages import Request, Response

log = logging.getLogger(__name__)

_IN_FLIGHT = metrics.in_flight("REST")
# REST verbs and resources -> the gRPC method names, so both entrypoints share API labels.
_API_LABELS = {"predict": PREDICT, "classify": "Classify", "regress": "Regress", "metadata": "GetModelMetadata",
               "status": "GetModelStatus", "infer": "ModelInfer", "ready": "ModelReady"}


def error_response(status: int, message: str, retry_after: int = 0) -> Response:
    headers = (("retry-after", str(retry_after)),) if retry_after else ()
    return Response(status, orjson.dumps({"error": message}), headers=headers)


def serving_error_response(error: ServingError) -> Response:
    return error_response(error.http_status, error.message, error.retry_after)


class RestApp:
    def __init__(
        self, pipeline: Pipeline, registry: Registry, v1, v2=None, *, timeout_ms: int = 0, auth: TokenAuth | None = None,
        metrics_path: str = METRICS_PATH,
    ):
        self._pipeline = pipeline
        self._registry = registry  # metrics labels
        self._v1 = v1  # services.tf_serving_rest.RestV1
        self._v2 = v2  # services.v2_rest.V2Rest, the Open Inference Protocol's /v2 routes
        self._timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self._auth = auth if auth is not None and auth.enabled else None
        self._metrics_paths = (metrics_path, "/metrics")
        self._pending: list[InferenceCall] = []  # this loop iteration's inference calls
        self._waiting: dict[asyncio.Future, InferenceCall] = {}  # by response: calls not answered yet
        self._ahead: dict[tuple, int] = {}  # _early_target -> this iteration's calls for it, not queued yet

    def __call__(self, request: Request) -> Awaitable[Response]:
        if request.method == "GET" and request.path in self._metrics_paths:
            # off the event loop: rendering the registry takes 50-100 ms, which every other request would wait
            return asyncio.get_running_loop().run_in_executor(None, self._scrape, request)
        started = time.perf_counter()
        deadline = deadline_after(self._timeout)  # from its arrival: reading the body counts
        try:
            surface = TokenAuth.rest_surface(request.path) if self._auth is not None else "open"
            if self._auth is not None and surface != "open":
                self._auth.check(request.headers.get("authorization"), surface == "admin")
            priority = request.headers.get(PRIORITY_KEY)
            early = self._early_target(request, priority) if priority is not None else None
            if early is not None:
                refusal = self._pipeline.refused_on_arrival(*early, ahead=self._ahead.get(early, 0), started=started)
                if refusal is not None:
                    self._record(request, refusal.code, started)
                    return _done(serving_error_response(refusal))
            routed = self._route(request)
            if priority is not None and isinstance(routed, InferenceCall) and not routed.priority:
                routed.priority = priority_level(priority)  # (the request's own parameters.priority comes first)
        except Exception as exc:  # noqa: BLE001 - a request that breaks decoding fails alone
            error = exc if isinstance(exc, ServingError) else internal(exc)
            if error is not exc:
                log.exception("unexpected error decoding a REST request")
            self._record(request, error.code, started)
            return _done(serving_error_response(error))
        if isinstance(routed, InferenceCall):
            if early is not None:  # ahead of the next one for its queue until this iteration's calls are submitted
                self._ahead[early] = self._ahead.get(early, 0) + 1
            return self._submit(routed, started, deadline, request.headers)
        return self._serve(request, routed, started)

    def _route(self, request: Request):
        return self._router(request.path).route(request)

    def _router(self, path: str):
        """The service whose REST routes a path belongs to: V2's (/v2) or TF Serving's."""
        return self._v2 if self._v2 is not None and (path == "/v2" or path.startswith("/v2/")) else self._v1

    def _early_target(self, request: Request, priority: str) -> tuple[str, int | None, str | None, str, int] | None:
        """(model, version, label, API, priority) of an inference request that can be refused
        before its body is decoded when its queue is full at its priority level (under overload,
        decoding the requests that will be refused is what keeps the event loop from the others);
        None where the body could change the answer: it names a signature or a priority."""
        body = request.body
        if b'"signature_name"' in body or b'"priority"' in body:
            return None
        target: tuple[str, int | None, str | None, str] | None = self._router(request.path).target(request)
        return None if target is None else (*target, priority_level(priority))

    # ------------------------------------------------------------ inference calls

    def _submit(self, call: InferenceCall, started: float, deadline: float | None, headers: dict[str, str]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        call.entrypoint = "REST"
        call.started = started
        call.deadline = deadline
        if tracing.enabled():
            tracing.start_request(call, headers)
        call.reply, call.reply_to = self._reply, [future, None]  # [its response, its flush's _Deadline]
        _IN_FLIGHT.inc()  # until the pipeline answers it
        self._waiting[future] = call
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append(call)
        return future

    def _flush(self) -> None:
        """This loop iteration's calls to the pipeline, with one timer for their deadline."""
        pending, self._pending = self._pending, []
        self._ahead.clear()
        if self._timeout is not None:
            last = pending[-1].deadline  # the latest: they arrived in order
            assert last is not None  # from the timeout
            delay = max(0.0, last - time.monotonic())
            deadline = _Deadline(len(pending), asyncio.get_running_loop().call_later(delay, self._expire, pending))
            for call in pending:
                call.reply_to[1] = deadline
        self._pipeline.submit(pending)

    def _expire(self, calls: list[InferenceCall]) -> None:
        for call in calls:
            if not call.answered:
                self._pipeline.expire(call)

    def _reply(self, call: InferenceCall, error: ServingError | None, payload) -> None:
        future, deadline = call.reply_to
        self._waiting.pop(future, None)
        if deadline is not None:
            deadline.answered()
        if future.done():  # cancelled: the connection has closed
            return
        if error is None:
            future.set_result(payload if isinstance(payload, Response) else Response(200, payload))
        elif error.code == StatusCode.DEADLINE_EXCEEDED:
            future.set_result(self._deadline_response())
        else:
            future.set_result(serving_error_response(error))

    def gone(self, response: asyncio.Future) -> None:
        """The connection of this response closed before it was written (the HTTP server says)."""
        call = self._waiting.pop(response, None)
        if call is not None:
            self._pipeline.cancel(call)

    # ------------------------------------------------------------ other requests

    async def _serve(self, request: Request, answer: Awaitable[Response], started: float) -> Response:
        code = StatusCode.OK
        _IN_FLIGHT.inc()
        try:
            return await asyncio.wait_for(answer, self._timeout)  # (asyncio.timeout is Python 3.11's)
        except ServingError as exc:
            code = exc.code
            return serving_error_response(exc)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            code = StatusCode.DEADLINE_EXCEEDED
            return self._deadline_response()
        except asyncio.CancelledError:  # the client closed its connection
            code = StatusCode.CANCELLED
            raise
        finally:
            _IN_FLIGHT.dec()
            self._record(request, code, started)

    def _deadline_response(self) -> Response:
        assert self._timeout is not None  # only a timeout expires a request
        return error_response(HTTP_STATUS[StatusCode.DEADLINE_EXCEEDED], limits.rest_timeout_message(self._timeout))

    def _scrape(self, request: Request) -> Response:
        """Prometheus' scrape: not a request itself (no request metrics), but it needs the token."""
        if self._auth:
            try:
                self._auth.check(request.headers.get("authorization"), admin=False)
            except ServingError as exc:
                return serving_error_response(exc)
        body, content_type = metrics.scrape()
        return Response(200, body, content_type)

    def _record(self, request: Request, code: StatusCode, started: float) -> None:
        """Metrics and the sampled request log of a request the pipeline does not answer:
        API and model come from the path."""
        parts = request.path.split("/")
        model = parts[3].partition(":")[0] if len(parts) > 3 and parts[2] == "models" else ""
        if model and self._registry.entry(model) is None:
            model = metrics.UNKNOWN_MODEL
        last = parts[-1]
        if ":" in last:
            verb = last.rpartition(":")[2].lower()
        elif request.method == "GET":
            verb = last if last in ("metadata", "ready") else "status"
        else:
            verb = last
        api = _API_LABELS.get(verb, "other")
        seconds = metrics.request_series("REST", api, model).done(code, started)
        request_log.record("REST", api, model, code, seconds)


class _Deadline:
    """The timer that answers a flush's calls at their deadline, stopped once all have their answer
    (it would keep them alive until it fired)."""

    __slots__ = ("_waiting", "_timer")

    def __init__(self, calls: int, timer: asyncio.TimerHandle):
        self._waiting = calls
        self._timer = timer

    def answered(self) -> None:
        self._waiting -= 1
        if not self._waiting:
            self._timer.cancel()


def _done(response: Response) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(response)
    return future
