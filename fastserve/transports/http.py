"""HTTP/1.1 server on asyncio (uvloop) with httptools' parser.

Kept thin on purpose: the frontend's cost per request is a budget the batcher needs.
Requests on one connection are handled concurrently; responses go out in order
(HTTP pipelining). The application is one call: app(request) -> an awaitable Response
(a coroutine, or a future it resolves itself); when a connection closes before its
responses are written, app.gone(response) is told of each (then it is cancelled).
"""
import asyncio
import functools
import logging
import ssl
from http import HTTPStatus
from typing import Awaitable, Callable

import httptools

from fastserve import metrics
from fastserve.services.rest_messages import Request, Response


log = logging.getLogger(__name__)


App = Callable[[Request], Awaitable[Response]]  # with a method gone(response)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == 499 else "Unknown"


def encode_response(response: Response, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {response.status} {_reason(response.status)}", f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}"]
    head.extend(f"{k}: {v}" for k, v in response.headers)
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


class _InFlight:
    """Requests accepted and not yet answered, across all connections (for a graceful drain)."""

    def __init__(self):
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False  # shutting down: new requests are refused, even on open connections

    def add(self):
        self.count += 1
        self.idle.clear()

    def done(self):
        self.count -= 1
        if self.count == 0:
            self.idle.set()


class _Connection(asyncio.Protocol):
    def __init__(self, app: App, max_body_bytes: int, on_error: Callable[[int, str], Response], in_flight: _InFlight):
        self._app = app
        self._in_flight = in_flight
        self._max_body = max_body_bytes
        self._on_error = on_error
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._last_write: asyncio.Future | None = None  # keeps responses in request order
        self._unanswered: set[asyncio.Future] = set()  # cancelled if the client goes away
        self._closing = False  # the connection is gone or being closed
        self._broken = False  # unparseable input: answer once, read nothing more

    # asyncio.Protocol
    def connection_made(self, transport):
        self._transport = transport

    def connection_lost(self, exc):
        self._closing = True
        for response in list(self._unanswered):  # no one is left to read them: stop their work
            self._app.gone(response)
            response.cancel()

    def data_received(self, data: bytes):
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply_and_close(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reply_and_close(400, f"malformed HTTP request: {exc}")

    # httptools callbacks
    def on_message_begin(self):
        self._url, self._headers, self._body, self._body_size, self._too_large = b"", {}, [], 0, False

    def on_url(self, url: bytes):
        self._url += url

    def on_header(self, name: bytes, value: bytes):
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self):
        # A client that asks before sending its body (curl does, for bodies over 1 MB) is told to go on.
        if self._headers.get("expect", "").lower() == "100-continue" and not self._broken:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes):
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True
            return
        self._body.append(body)

    def on_message_complete(self):
        keep_alive = self._parser.should_keep_alive()
        if self._too_large:
            metrics.rejected("request_too_large")
            self._reply_and_close(413, f"request body is larger than the limit of {self._max_body} bytes")
            return
        if self._in_flight.draining:
            self._reply_and_close(503, "the server is shutting down; retry on another replica")
            return
        url = httptools.parse_url(self._url)
        request = Request(
            method=self._parser.get_method().decode(),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
        )
        self._enqueue(asyncio.ensure_future(self._app(request)), keep_alive)

    # responses
    def _error_response(self, status: int, message: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(self._on_error(status, message))
        return future

    def _enqueue(self, response: asyncio.Future, keep_alive: bool):
        self._in_flight.add()
        self._unanswered.add(response)
        previous = self._last_write
        if previous is None or previous.done():
            # Nothing ahead of it on this connection: write it from its done callback (no task).
            self._last_write = response
            response.add_done_callback(functools.partial(self._write_done, keep_alive))
        else:  # pipelined behind an unanswered request: keep the order
            self._last_write = asyncio.ensure_future(self._write_after(previous, response, keep_alive))

    async def _write_after(self, previous: asyncio.Future, response: asyncio.Future, keep_alive: bool):
        await asyncio.wait((previous,))  # its outcome is its own; only its turn matters here
        await asyncio.wait((response,))
        self._write_done(keep_alive, response)

    def _write_done(self, keep_alive: bool, response: asyncio.Future):
        self._unanswered.discard(response)
        try:
            if response.cancelled() or self._closing or self._transport.is_closing():
                return  # the server is stopping, or no one is left to read it
            try:
                result = response.result()
            except Exception as exc:  # noqa: BLE001 - the app maps its errors; this is a bug
                log.error("unhandled error in an HTTP handler", exc_info=exc)
                result = self._on_error(500, f"internal error: {type(exc).__name__}: {exc}")
            self._transport.write(encode_response(result, keep_alive))
            if not keep_alive:
                self._closing = True
                self._transport.close()
        finally:
            self._in_flight.done()

    def _reply_and_close(self, status: int, message: str):
        self._broken = True
        self._enqueue(self._error_response(status, message), False)


class HttpServer:
    def __init__(self, app: App, on_error: Callable[[int, str], Response], max_body_bytes: int):
        self._app = app
        self._on_error = on_error
        self._max_body = max_body_bytes
        self._server: asyncio.AbstractServer | None = None
        self._in_flight: _InFlight | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        self._in_flight = _InFlight()
        self._server = await loop.create_server(
            lambda: _Connection(self._app, self._max_body, self._on_error, self._in_flight),
            host, port, reuse_address=True, backlog=1024, ssl=ssl_context,
        )
        return self._server.sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        """No new connections, and no new requests on open ones (they get 503)."""
        if self._in_flight:
            self._in_flight.draining = True
        if self._server:
            self._server.close()

    async def drain(self, timeout: float) -> bool:
        """Wait until every accepted request is answered; False if the timeout came first."""
        if self._in_flight is None:
            return True
        try:
            await asyncio.wait_for(self._in_flight.idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
