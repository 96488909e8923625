"""gRPC transport on libgrpc++ (csrc/grpc_transport.cc): C++ runs the server, Python the calls.

A C++ thread drives gRPC's completion queue and never touches Python. Calls whose request
has arrived wait there; one wake-up of this transport's event loop (uvloop, on its own
thread) takes all of them. The inference calls among them go to the pipeline together
(so those that agree are served as groups); each other call runs as a task through the
shared step (grpc_calls.Method). The answers made in one loop iteration go back to C++ in
one respond(). Cancellations (client gone, deadline passed) arrive the same way: an
inference call is answered and dropped from its batch, a task is cancelled. So do the accept
thread's reports: connections refused at the cap (counted) and its notices (logged).
"""
import asyncio
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable

import uvloop
from grpc import StatusCode

from fastserve import metrics
from fastserve.auth import TokenAuth
from fastserve.config import MAX_MESSAGE_BYTES
from fastserve.errors import ServingError
from fastserve.pipeline.call import InferenceCall
from fastserve.services.catalog import Services
from fastserve.transports.grpc_calls import (
    InferMethod, MessageStream, Method, Outcome, ResponseStream, StreamMethod, count_gone_on_arrival,
    method_table,
)
from fastserve.tls import SSLConfig

MORE = -1  # a reply status: one of a stream message's answers, more follow (csrc/grpc_transport.cc)
log = logging.getLogger(__name__)


def _load_transport():
    """The extension, or None where it is not built (the server then uses grpc.aio).

    TensorFlow puts its own BoringSSL (and gRPC) in the process's global symbol scope;
    RTLD_DEEPBIND makes libgrpc++ bind to the libraries it was built with (OpenSSL) first.
    """
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        from fastserve._native.grpc_transport import Transport
    except ImportError:
        return None
    finally:
        sys.setdlopenflags(flags)
    return Transport


Transport = _load_transport()
AVAILABLE = Transport is not None
_CANCELLED = Outcome(StatusCode.CANCELLED, "Cancelled", None)  # no one is listening any more


def chosen_transport(requested: str) -> str:
    """"native" or "aio": the one asked for, else native where it is built."""
    if requested == "native" and not AVAILABLE:
        raise OSError(
            "--grpc_transport=native: this build has no native gRPC transport "
            "(install libgrpc++-dev and pkg-config, then reinstall fastserve)"
        )
    return requested or ("native" if AVAILABLE else "aio")


class NativeGrpcServer:
    """Same interface as grpc_aio.GrpcServer: start(), bound, stop(grace)."""

    def __init__(
        self, service: Services, addresses: list[str], *, max_receive_bytes: int = MAX_MESSAGE_BYTES,
        ssl: SSLConfig | None = None, auth: TokenAuth | None = None, max_connections: int = 0, max_concurrent_streams: int = 0,
    ):
        is_served: Callable[[str], bool] = lambda name: service.registry.entry(name) is not None
        self._methods = method_table(service.grpc_methods(), auth, is_served)
        self._pipeline = service.pipeline
        tls = (ssl.server_key, ssl.server_cert, ssl.custom_ca, ssl.client_verify) if ssl else None
        self._addresses = addresses
        streaming = [path for path, method in self._methods.items()
                     if isinstance(method, (StreamMethod, MessageStream, ResponseStream))]
        self._transport = Transport(addresses, max_receive_bytes, MAX_MESSAGE_BYTES, tls, max_connections, max_concurrent_streams,
                                    streaming)
        self._loop = uvloop.new_event_loop()
        self._thread: threading.Thread | None = None
        self._tasks: dict[int, asyncio.Task] = {}  # plain calls being served
        self._calls: dict[int, InferenceCall] = {}  # inference calls not answered yet
        self._call_reply = self._answer_call  # bound once: every inference call's reply
        self._replies: list[tuple] = []
        self.bound: list[str] = []

    def start(self) -> None:
        ports = self._transport.start()  # OSError when an address cannot be bound
        for address, port in zip(self._addresses, ports):
            self.bound.append(address if address.startswith("unix:") else address.rsplit(":", 1)[0] + f":{port}")
        self._thread = threading.Thread(target=self._run, name="fastserve-grpc", daemon=True)
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Stop accepting calls, let accepted ones finish (up to grace seconds), then stop."""
        if self._thread is None:
            return
        self._transport.shutdown(grace)  # the loop keeps answering while this waits
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.add_reader(self._transport.fileno(), self._take)
        try:
            self._loop.run_forever()
        finally:
            self._loop.remove_reader(self._transport.fileno())
            leftovers = list(self._tasks.values())  # only after the transport gave up on them
            for task in leftovers:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self._loop.close()

    def _take(self) -> None:
        """Every call (and cancellation) waiting in C++, in one go."""
        handoff = self._transport.take()
        for notice in handoff.notices:
            log.warning("%s", notice)
        if handoff.refused:
            metrics.rejected("too_many_connections", handoff.refused)
        for path in handoff.expired:  # answered in C++; counted as the per-call path counts an expired call
            if path in self._methods:
                count_gone_on_arrival(path)
        calls, cancelled = handoff.calls, handoff.cancelled
        if cancelled:
            calls = self._drop_gone_on_arrival(calls, set(cancelled))
        inference = []
        for call in calls:
            method = self._methods.get(call.method)
            if isinstance(method, InferMethod):  # a StreamMethod's calls are its stream's messages
                try:
                    inference_call = method.start(call.payload, call.metadata, call.timeout)
                except ServingError as exc:
                    self._reply([self._error_reply(method, call.id, exc)])
                    continue
                reply = functools.partial(self._answer_message, method) if isinstance(method, StreamMethod) else self._call_reply
                inference_call.reply, inference_call.reply_to = reply, call.id
                self._calls[call.id] = inference_call
                inference.append(inference_call)
                continue
            if isinstance(method, ResponseStream):
                task = self._loop.create_task(self._stream_responses(method, call))
            else:
                task = self._loop.create_task(self._serve(method, call))
            # A done callback, not the coroutine, answers: a task cancelled before it
            # started never runs its body, and its call must be answered all the same.
            task.add_done_callback(functools.partial(self._answer, call.id))
            self._tasks[call.id] = task
        if inference:
            metrics.in_flight("GRPC").inc(len(inference))
            self._pipeline.submit(inference)
        for call_id in cancelled:
            gone = self._calls.get(call_id)
            if gone is not None:
                self._pipeline.cancel(gone)
                continue
            running = self._tasks.get(call_id)
            if running is not None:
                running.cancel()

    def _drop_gone_on_arrival(self, calls: list, cancelled: set[int]) -> list:
        """Calls cancelled in the hand-off that brought them (a task cancelled before it starts
        never runs its body): answered and counted here, never started."""
        kept = []
        for call in calls:
            if call.id not in cancelled:
                kept.append(call)
                continue
            if call.method in self._methods:
                expired_ = call.timeout is not None and call.timeout <= 0
                count_gone_on_arrival(call.method, StatusCode.DEADLINE_EXCEEDED if expired_ else StatusCode.CANCELLED)
            self._reply([(call.id, _CANCELLED.code.value[0], _CANCELLED.message, None)])
        return kept

    @staticmethod
    async def _serve(method: Method | None, call) -> Outcome:
        if method is None:
            return Outcome(StatusCode.UNIMPLEMENTED, f"Method not found: {call.method}", None)
        return await method(call.payload, call.metadata, call.timeout)

    async def _stream_responses(self, method: ResponseStream, call) -> Outcome:
        """Each response goes out as one of the call's answers (C++ writes them to its stream)."""
        try:
            async for payload in method.responses(call.payload, call.metadata, call.timeout):
                self._reply([(call.id, MORE, "", payload)])
        except ServingError as exc:
            return Outcome(exc.code, exc.message, None)
        return Outcome(StatusCode.OK, "", None)  # no more answers

    def _answer(self, call_id: int, task: asyncio.Task) -> None:
        del self._tasks[call_id]
        outcome = _CANCELLED if task.cancelled() else task.result()
        self._reply([(call_id, outcome.code.value[0], outcome.message, outcome.payload)])

    def _answer_call(self, call: InferenceCall, error: ServingError | None, payload: bytes | None) -> None:
        call_id = call.reply_to
        del self._calls[call_id]
        if not self._replies:
            self._loop.call_soon(self._flush)
        self._replies.append((call_id, error.code.value[0], error.message, None) if error is not None else (call_id, 0, "", payload))

    def _answer_message(self, method: StreamMethod, call: InferenceCall, error: ServingError | None, payload: bytes | None) -> None:
        """A stream message's answer: a stream message of its own, even an error (C++ writes them in order)."""
        del self._calls[call.reply_to]
        self._reply([self._error_reply(method, call.reply_to, error) if error is not None else (call.reply_to, 0, "", method.frame(payload, None))])

    @staticmethod
    def _error_reply(method: InferMethod, call_id: int, error: ServingError) -> tuple:
        """An error as a call's status; on a stream, as a message (a refused token ends the stream)."""
        if isinstance(method, StreamMethod) and error.code is not StatusCode.UNAUTHENTICATED:
            return call_id, 0, "", method.frame(None, error)
        return call_id, error.code.value[0], error.message, None

    def _reply(self, replies: list[tuple]) -> None:
        if not self._replies:
            self._loop.call_soon(self._flush)
        self._replies.extend(replies)

    def _flush(self) -> None:
        """Send this loop iteration's answers to C++ in one call."""
        replies, self._replies = self._replies, []
        self._transport.respond(replies)
