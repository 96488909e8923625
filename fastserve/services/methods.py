"""The kinds of entries of the services' method tables ("/package.Service/Method": entry),
besides (request class, handler) for a unary method and the inference entries
(fastserve.pipeline.call.Inference, StreamedInference)."""
from typing import NamedTuple
from collections.abc import AsyncIterator, Callable


class Streamed(NamedTuple):
    """A bidirectional stream: handler(request) answers each message, in order."""
    request_class: type
    handler: Callable


class ServerStream(NamedTuple):
    """One request, answered by a stream: handler(request) is an async iterator of responses."""
    request_class: type
    handler: Callable[[object], AsyncIterator]
