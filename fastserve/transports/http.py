"""HTTP/1.1 server on asyncio (uvloop) with httptools' parser.

Kept thin on purpose: the frontend's cost per request is a budget the batcher needs.
Requests on one connection are handled concurrently; responses go out in order
(HTTP pipelining). The application is one call: app(request) -> an awaitable Response
(a coroutine, or a future it resolves itself); when a connection closes before its
responses are written, app.gone(response) is told of each (then it is cancelled).

Limits (HttpLimits) keep one client from starving the others: connections beyond a cap are
answered 503 and closed; a request's URL (414) and head (431) are measured as their bytes
arrive, so an oversized one is refused before it is parsed; a head must arrive within a
timeout (408) and a connection with nothing to do is closed after another; and a
connection has at most max_pipelined requests in flight: beyond them, or while its client
does not read its answers, it is not read.
"""
import asyncio
import collections
import functools
import logging
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from collections.abc import Awaitable, Callable

import httptools

from fastserve import metrics
from fastserve.services.rest_messages import Request, Response


log = logging.getLogger(__name__)


App = Callable[[Request], Awaitable[Response]]  # with a method gone(response)

# After an error answer the connection is read (and the input dropped) this long before it is
# closed: closing with unread input resets it, and the client may lose the answer.
_LINGER_SECONDS = 2.0
# Input is parsed at most this much at a time while a request head is read, and a chunked body
# this much: a read full of small pipelined requests is parsed a few dozen at a time, and what
# follows the one that reaches max_pipelined stays unparsed (bytes) until answers drain.
_HEAD_SLICE = 4096
_CHUNKED_SLICE = 65536


@dataclass(frozen=True)
class HttpLimits:
    """What one client may take (ServerConfig's REST limits: their defaults live there)."""

    max_body_bytes: int
    max_connections: int
    max_header_bytes: int  # request line and headers together
    max_url_bytes: int
    max_pipelined: int  # requests of one connection in flight at once
    header_timeout: float  # seconds for a request line and headers to arrive; 0 = no limit
    idle_timeout: float  # seconds a connection may wait for its next request; 0 = no limit


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


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request refused for its size."""


class _Clock:
    """Connections whose time runs (reading a request head, or idle), in the order it started.

    All share one timeout, so the oldest expire first: a sweep stops at the first that has
    not, and a request costs a dict insert and delete rather than a timer.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._since: dict[_Connection, float] = {}

    def start(self, connection: "_Connection", now: float) -> None:
        if self.timeout > 0 and connection not in self._since:  # a running clock keeps its start
            self._since[connection] = now

    def stop(self, connection: "_Connection") -> None:
        self._since.pop(connection, None)

    def expired(self, now: float) -> list["_Connection"]:
        out = []
        for connection, since in self._since.items():
            if now - since < self.timeout:
                break
            out.append(connection)
        for connection in out:
            del self._since[connection]
        return out


class _Shared:
    """What the connections share: the app, the limits, the open connections and their clocks,
    and the requests accepted and not yet answered (for a graceful drain)."""

    def __init__(self, app: App, on_error: Callable[[int, str], Response], limits: HttpLimits):
        self.app = app
        self.on_error = on_error
        self.limits = limits
        self.connections = 0
        self.heads = _Clock(limits.header_timeout)
        self.idle_connections = _Clock(limits.idle_timeout)
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False  # shutting down: new requests are refused, even on open connections

    def add(self):
        self.in_flight += 1
        self.idle.clear()

    def done(self):
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


class _Connection(asyncio.Protocol):
    def __init__(self, shared: _Shared):
        self._shared = shared
        self._limits = shared.limits
        self._app = shared.app
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._reading_head = True  # the next bytes belong to a request line or headers
        self._head_bytes = 0  # ... and this many have arrived (counted from a slice's start: at most one short)
        self._content_length: int | None = None  # of the body being read; None: chunked
        self._in_message = False  # a request has begun and is not complete
        self._messages = 0  # requests parsed
        self._refusal: tuple[int, str] | None = None  # why parsing was stopped (_Refused)
        self._last_write: asyncio.Future | None = None  # keeps responses in request order
        self._unanswered: set[asyncio.Future] = set()  # cancelled if the client goes away
        self._waiting: collections.deque = collections.deque()  # (start, keep_alive) beyond max_pipelined
        self._unread = b""  # input after them, parsed once they have started
        self._write_blocked = False  # the transport's buffer is full: the client is not reading
        self._paused = False  # reading is paused
        self._counted = False  # one of shared.connections (not refused at the cap)
        self._linger: asyncio.TimerHandle | None = None
        self._closing = False  # the connection is gone or being closed
        self._broken = False  # unparseable input: answer once, read nothing more

    # asyncio.Protocol
    def connection_made(self, transport):
        self._transport = transport
        shared = self._shared
        if shared.connections >= self._limits.max_connections:
            metrics.rejected("too_many_connections")
            self._closing = self._broken = True
            message = f"too many connections: the server serves at most {self._limits.max_connections}; retry later"
            transport.write(encode_response(shared.on_error(503, message), False))
            transport.close()  # at once, without lingering: a flood of them must not hold descriptors
            return
        shared.connections += 1
        self._counted = True
        shared.heads.start(self, self._loop.time())  # its first request head is due

    def connection_lost(self, exc):
        self._closing = True
        if self._counted:
            self._shared.connections -= 1
            self._shared.heads.stop(self)
            self._shared.idle_connections.stop(self)
        if self._linger is not None:
            self._linger.cancel()
        self._waiting.clear()  # never started: nothing to stop
        self._unread = b""
        for response in list(self._unanswered):  # no one is left to read them: stop their work
            self._app.gone(response)
            response.cancel()

    def data_received(self, data: bytes | memoryview):
        if self._unread:
            data, self._unread = self._unread + data, b""
        data = memoryview(data)
        while data and not self._broken:
            if self._waiting:  # max_pipelined are in flight: the rest waits, unparsed
                self._unread = bytes(data)
                return
            if self._reading_head:  # counted before it is parsed: an oversized head is refused unparsed
                size = min(len(data), _HEAD_SLICE, max(1, self._limits.max_header_bytes - self._head_bytes))
                self._head_bytes += size
            elif self._content_length is not None:  # a body to its end, in one piece
                size = min(len(data), max(1, self._content_length - self._body_size))
            else:
                size = min(len(data), _CHUNKED_SLICE)
            messages = self._messages
            self._feed(data[:size])
            data = data[size:]
            if self._reading_head and self._messages == messages and self._head_bytes >= self._limits.max_header_bytes and not self._broken:
                metrics.rejected("header_too_large")
                self._reply_and_close(431, f"the request line and headers are larger than the limit of {self._limits.max_header_bytes} bytes")

    def pause_writing(self):
        self._write_blocked = True
        self._flow()

    def resume_writing(self):
        self._write_blocked = False
        self._flow()

    def _feed(self, data: bytes | memoryview):
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply_and_close(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if self._refusal is not None:
                self._reply_and_close(*self._refusal)
            else:
                self._reply_and_close(400, f"malformed HTTP request: {exc}")

    # httptools callbacks
    def on_message_begin(self):
        self._url, self._headers, self._body, self._body_size, self._too_large = b"", {}, [], 0, False
        self._in_message = True
        self._shared.idle_connections.stop(self)
        if not self._paused:
            self._shared.heads.start(self, self._loop.time())

    def on_url(self, url: bytes):
        self._url += url
        if len(self._url) > self._limits.max_url_bytes:
            metrics.rejected("url_too_long")
            self._refusal = (414, f"the request URL is longer than the limit of {self._limits.max_url_bytes} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes):
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self):
        self._reading_head = False
        self._head_bytes = 0
        self._shared.heads.stop(self)
        length = self._headers.get("content-length")
        self._content_length = int(length) if length is not None and "transfer-encoding" not in self._headers else None
        # A client that asks before sending its body (curl does, for bodies over 1 MB) is told to go on.
        if self._headers.get("expect", "").lower() == "100-continue" and not self._broken:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes):
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._too_large = True
            return
        self._body.append(body)

    def on_message_complete(self):
        self._in_message = False
        self._reading_head = True
        self._messages += 1
        if self._broken:  # answered already; what follows is not read
            return
        keep_alive = self._parser.should_keep_alive()
        if self._too_large:
            metrics.rejected("request_too_large")
            self._reply_and_close(413, f"request body is larger than the limit of {self._limits.max_body_bytes} bytes")
            return
        if self._shared.draining:
            self._reply_and_close(503, "the server is shutting down; retry on another replica")
            return
        url = httptools.parse_url(self._url)
        request = Request(
            method=self._parser.get_method().decode(),
            path=url.path.decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
        )
        self._admit(functools.partial(self._start, request), keep_alive)

    # clocks (HttpServer's sweep)
    def head_timed_out(self):
        if self._closing or self._broken:
            return
        metrics.rejected("header_timeout")
        if self._in_message:
            self._reply_and_close(408, f"the request line and headers did not arrive within {self._limits.header_timeout:g} s")
        else:  # a connection that never sent a request
            self._close()

    def idle_timed_out(self):
        if not self._closing:
            self._close()

    # requests and responses
    def _start(self, request: Request) -> asyncio.Future:
        return asyncio.ensure_future(self._app(request))

    def _error_response(self, status: int, message: str) -> asyncio.Future:
        future = self._loop.create_future()
        future.set_result(self._shared.on_error(status, message))
        return future

    def _admit(self, start: Callable[[], asyncio.Future], keep_alive: bool):
        """Start a request, or let it wait (parsed, not started) while max_pipelined are in flight."""
        if self._waiting or len(self._unanswered) >= self._limits.max_pipelined:
            self._waiting.append((start, keep_alive))
        else:
            self._enqueue(start(), keep_alive)
        self._flow()

    def _enqueue(self, response: asyncio.Future, keep_alive: bool):
        self._shared.add()
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
        transport = self._transport
        assert transport is not None  # connected before its first request
        try:
            if response.cancelled() or self._closing or transport.is_closing():
                return  # the server is stopping, or no one is left to read it
            try:
                result = response.result()
            except Exception as exc:  # noqa: BLE001 - the app maps its errors; this is a bug
                log.error("unhandled error in an HTTP handler", exc_info=exc)
                result = self._shared.on_error(500, f"internal error: {type(exc).__name__}: {exc}")
            transport.write(encode_response(result, keep_alive))
            if not keep_alive:
                self._close()
        finally:
            self._next()  # before done(): a drain must not see zero while requests still wait
            self._shared.done()

    def _next(self):
        """After an answer: start waiting requests, read again, or start the idle clock."""
        if self._closing:
            return
        while self._waiting and len(self._unanswered) < self._limits.max_pipelined:
            start, keep_alive = self._waiting.popleft()
            self._enqueue(start(), keep_alive)
        if self._unread and not self._waiting:
            self.data_received(b"")
        self._flow()
        if not self._unanswered and not self._in_message:
            self._shared.idle_connections.start(self, self._loop.time())

    def _flow(self):
        """Read while the connection has room for requests and its client reads its answers."""
        pause = self._write_blocked or bool(self._waiting or self._unread) or len(self._unanswered) >= self._limits.max_pipelined
        if pause == self._paused or self._closing:
            return
        self._paused = pause
        if pause:
            self._transport.pause_reading()
            self._shared.heads.stop(self)  # its time does not run while it is not read
        else:
            self._transport.resume_reading()
            if self._in_message and self._reading_head:
                self._shared.heads.start(self, self._loop.time())

    def _reply_and_close(self, status: int, message: str):
        self._broken = True
        self._shared.heads.stop(self)
        self._admit(functools.partial(self._error_response, status, message), False)

    def _close(self):
        """Close after the last answer; after an error answer, linger first (see _LINGER_SECONDS)."""
        self._closing = True
        self._shared.heads.stop(self)
        self._shared.idle_connections.stop(self)
        if not self._broken:
            self._transport.close()
            return
        if self._transport.can_write_eof():
            self._transport.write_eof()  # the client sees the answer end; its own end closes the connection
        if self._paused:
            self._transport.resume_reading()  # input is read and dropped (data_received ignores it)
        self._linger = self._loop.call_later(_LINGER_SECONDS, self._transport.close)


class HttpServer:
    def __init__(self, app: App, on_error: Callable[[int, str], Response], limits: HttpLimits):
        self._app = app
        self._on_error = on_error
        self._limits = limits
        self._server: asyncio.AbstractServer | None = None
        self._shared: _Shared | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        self._shared = shared = _Shared(self._app, self._on_error, self._limits)
        timeouts = [t for t in (self._limits.header_timeout, self._limits.idle_timeout) if t > 0]
        # A connection is counted and timed from the end of its TLS handshake: bound the handshake too.
        handshake = self._limits.header_timeout if ssl_context is not None and self._limits.header_timeout > 0 else None
        self._server = server = await loop.create_server(
            lambda: _Connection(shared), host, port, reuse_address=True, backlog=1024, ssl=ssl_context,
            ssl_handshake_timeout=handshake,
        )
        if timeouts:
            # A clock is checked a few times per timeout: it fires at most a quarter late.
            self._sweep(loop, min(1.0, max(0.05, min(timeouts) / 4)), shared)
        return server.sockets[0].getsockname()[1]

    def _sweep(self, loop: asyncio.AbstractEventLoop, every: float, shared: _Shared) -> None:
        now = loop.time()
        for connection in shared.heads.expired(now):
            connection.head_timed_out()
        for connection in shared.idle_connections.expired(now):
            connection.idle_timed_out()
        self._sweeper = loop.call_later(every, self._sweep, loop, every, shared)

    def stop_accepting(self) -> None:
        """No new connections, and no new requests on open ones (they get 503)."""
        if self._shared:
            self._shared.draining = True
        if self._server:
            self._server.close()

    async def drain(self, timeout: float) -> bool:
        """Wait until every accepted request is answered; False if the timeout came first."""
        if self._shared is None:
            return True
        try:
            await asyncio.wait_for(self._shared.idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            return False
